"""Serve a reward function over HTTP for ``reward.remote_url``:

    TETHER_REWARD_TOKEN=... python -m orchestrator.reward_server function=my_rewards.py:score port=8000

Binds 127.0.0.1 unless ``host`` says otherwise, and refuses to start without a token.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore

from orchestrator.errors import TetherError
from orchestrator.rewards.loader import load_reward_function
from orchestrator.rewards.remote import make_server


@dataclass
class RewardServerConfig:
    """Reward server settings."""

    function: str = "orchestrator/rewards/examples.py:letter_frequency"  # FILE.py:NAME to serve
    host: str = "127.0.0.1"  # bind address (0.0.0.0 exposes it to the network)
    port: int = 8000
    token_env: str = "TETHER_REWARD_TOKEN"  # variable holding the bearer token clients must send


ConfigStore.instance().store(name="reward_server", node=RewardServerConfig)


@hydra.main(config_path=None, config_name="reward_server", version_base="1.3")
def main(cfg: RewardServerConfig) -> None:
    """Load the function and serve until interrupted."""
    try:
        server = make_server(load_reward_function(cfg.function), cfg.function, os.environ.get(cfg.token_env, ""),
                             cfg.host, cfg.port)
    except TetherError as exc:
        print(f"tether: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"reward server: http://{cfg.host}:{server.server_address[1]}/score ({cfg.function})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
