"""Sequence models: GRU4Rec, Caser, SASRec, BERT4Rec."""
