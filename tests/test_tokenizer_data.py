import json

import pytest
import torch

from self_rewarding_lm_pytorch.core.batching import create_mock_dataset, pad_right
from self_rewarding_lm_pytorch.core.files import JsonlAppender, read_jsonl, write_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer, CallableTokenizer, as_tokenizer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ✓", "emoji 🙂 and \n newlines\t"])
def test_byte_tokenizer_round_trips(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([*ids, tok.eos_id, tok.pad_id]) == text  # specials are skipped


def test_seed_readme_callables_with_float_tensor():
    encode = lambda s: torch.Tensor(list(map(ord, s)))  # the seed's encode_str returns floats
    decode = lambda t: "".join(chr(max(32, int(x))) for x in t)
    tok = as_tokenizer(tokenizer_encode=encode, tokenizer_decode=decode)
    assert isinstance(tok, CallableTokenizer)
    assert tok.encode("abc") == [97, 98, 99]
    assert tok.decode(torch.tensor([97.0, 98.0])) == "ab"


def test_non_integral_float_ids_are_an_error():
    tok = CallableTokenizer(lambda s: torch.tensor([1.5]), lambda t: "")
    with pytest.raises(ValueError, match="whole numbers"):
        tok.encode("x")


def test_as_tokenizer_rejects_both_forms():
    with pytest.raises(ValueError, match="not both"):
        as_tokenizer(ByteTokenizer(), tokenizer_encode=str, tokenizer_decode=str)
    with pytest.raises(ValueError, match="together"):
        as_tokenizer(tokenizer_encode=str)


def test_mock_dataset_matches_seed_readme():
    ds = create_mock_dataset(100, lambda: (torch.randint(0, 256, (256,)), torch.tensor(1)))
    assert len(ds) == 100
    ids, prompt_len = ds[3]
    assert ids.shape == (256,) and int(prompt_len) == 1
    assert create_mock_dataset(2, "mock prompt")[1] == "mock prompt"


def test_pad_right():
    ids, is_real = pad_right([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert is_real.tolist() == [[True, True, True], [True, False, False]]


def test_jsonl_round_trip_and_partial_line(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    with open(path, "a") as f:
        f.write('{"c": ')  # a writer killed mid-line
    with pytest.raises(ValueError, match=r"x.jsonl:3"):
        read_jsonl(path)
    assert len(read_jsonl(path, ignore_partial_last_line=True)) == 2
    with JsonlAppender(path) as out:  # reopening drops the partial line, then appends
        out.write({"c": 3})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": "é"}, {"c": 3}]
