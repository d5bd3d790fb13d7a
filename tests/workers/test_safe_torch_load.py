"""DeepSpeed checkpoint files are read with torch.load(weights_only=True): DeepSpeed's own state
comes back, a file that would run code is refused (and the code does not run)."""

from __future__ import annotations

import pytest
import torch

from orchestrator.errors import CheckpointError
from tests.conftest import RunsCode
from workers.safe_torch_load import safe_load


def test_deepspeed_state_round_trips(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"optimizer_state_dict": {"loss_scaler": LossScaler(scale=4.0), "zero_stage": ZeroStageEnum.gradients,
                                      "dynamic": DynamicLossScaler(2.0**8, 10, 1.0, 2, False),
                                      "mappings": [{"w": fragment_address(numel=6, start=2)}],
                                      "partition": [torch.arange(6.0)], "ds_version": "0.19.8"}}
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, path)
    loaded = safe_load(str(path), map_location="cpu")["optimizer_state_dict"]
    assert loaded["loss_scaler"].cur_scale == 4.0 and loaded["dynamic"].cur_scale == 2.0**8
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["mappings"][0]["w"] == fragment_address(numel=6, start=2)
    assert torch.equal(loaded["partition"][0], torch.arange(6.0))


def test_a_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        safe_load(str(path), map_location="cpu")
    message = str(info.value)
    assert str(path) in message and "posix.system" in message and "weights_only=True" in message
    assert "\n" not in message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what DeepSpeed itself would do: the code runs
    assert marker.exists()
