"""Every trainer accepts any sized, indexable dataset (issue #11, defect 11): a class with only
__len__ and __getitem__, as a Hugging Face `datasets.Dataset` is (not a Sequence, not a torch Dataset)."""

import pytest
from conftest import tiny_lm

from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer, train_dpo
from self_rewarding_lm_pytorch.trainers.spin import SPINTrainer, encode_sft_items
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig

pytestmark = pytest.mark.stage


class OnlyLenAndGetitem:
    """Neither a Sequence nor a torch Dataset: just the two methods a Hugging Face dataset offers."""

    def __init__(self, rows):
        self._rows = list(rows)

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, index):
        return self._rows[index]


PREFS = [{"prompt": "q", "chosen": "good", "rejected": "bad"}, {"prompt": "r", "chosen": "yes", "rejected": "no"}]
SFT = [("q", "answer"), ("r", "reply")]


def tiny():
    return tiny_lm(max_seq_len=32, dim=16)


def test_dpo_trainer_and_train_dpo_take_a_len_getitem_dataset(tmp_path):
    data = OnlyLenAndGetitem(PREFS)
    trainer = DPOTrainer(tiny(), data, valid_data=data, num_train_steps=1, batch_size=2, progress=False)
    assert len(trainer.pairs) == 2
    config = TrainConfig(num_train_steps=1, batch_size=2, progress=False)
    result = train_dpo(
        tiny(), data, tokenizer=None, accelerator=make_accelerator(), run_dir=None, config=config, valid_records=data
    )
    assert result.steps == 1


def test_spin_takes_a_len_getitem_dataset(tmp_path):
    data = OnlyLenAndGetitem(SFT)
    assert len(encode_sft_items(data, _byte(), max_seq_len=16)) == 2
    SPINTrainer(tiny(), data, max_seq_len=16, checkpoint_folder=tmp_path)


def test_hugging_face_dataset_if_installed(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(PREFS)
    assert len(DPOTrainer(tiny(), data, num_train_steps=1, batch_size=2, progress=False).pairs) == 2


def _byte():
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer

    return ByteTokenizer()
