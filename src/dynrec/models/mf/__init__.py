"""The matrix-factorisation family: explicit-rating MF (`mf`), implicit ALS (`als`), BPR-MF (`bpr`),
PureSVD (`svd`), NMF (`nmf`) and the closed-form item-item EASE (`ease`).

Every model scores from the query's history — MF/ALS/BPR/SVD/NMF fold the history into a user
vector (`user_vectors(batch)`, with `item_vectors()` so that scores = user_vectors @ item_vectorsᵀ
(+ item biases for `mf`/`bpr`)) and EASE multiplies it by its item-item matrix — so a user need not
have been in training and a new event changes the next recommendation at once. Modules are
imported lazily through the registry in `dynrec.models.base`.
"""
