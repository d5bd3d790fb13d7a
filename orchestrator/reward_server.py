"""Serve a reward function over HTTP for ``reward.remote_url``:

    TETHER_REWARD_TOKEN=... python -m orchestrator.reward_server function=my_rewards.py:score port=8000

Settings are ``key=value`` arguments (the fields of ``RewardServerConfig``, type-checked). Binds
127.0.0.1 unless ``host`` says otherwise, and refuses to start without a token. It writes nothing
where it is started (no Hydra ``outputs/`` folder).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.errors import ConfigError, TetherError
from orchestrator.rewards.loader import DEFAULT_IMPORT_TIMEOUT_S, load_reward_function
from orchestrator.rewards.remote import ServerLimits, make_server


@dataclass
class RewardServerConfig:
    """Reward server settings."""

    function: str = "orchestrator/rewards/examples.py:letter_frequency"  # FILE.py:NAME to serve
    host: str = "127.0.0.1"  # bind address (0.0.0.0 exposes it to the network)
    port: int = 8000
    token_env: str = "TETHER_REWARD_TOKEN"  # variable holding the bearer token clients must send
    import_timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S  # longest wait for the function's file to import
    max_body_bytes: int = ServerLimits.max_body_bytes  # larger request bodies get 413
    read_timeout_s: float = ServerLimits.read_timeout_s  # a request not received by then: connection closed
    max_connections: int = ServerLimits.max_connections  # connections + requests at once (503 beyond)


def parse_args(argv: list[str]) -> RewardServerConfig:
    """``key=value`` arguments merged over the defaults; ConfigError naming a bad key or value."""
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        names = ", ".join(f.name for f in fields(RewardServerConfig))
        raise ConfigError(f"expected key=value arguments, got {bad[0]!r}; keys: {names}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RewardServerConfig), OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError((f"{key}: " if key else "") + str(exc).splitlines()[0]) from None
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> None:
    """Load the function and serve until interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return
    try:
        cfg = parse_args(argv)
        limits = ServerLimits(max_body_bytes=cfg.max_body_bytes, read_timeout_s=cfg.read_timeout_s,
                              max_connections=cfg.max_connections)
        server = make_server(load_reward_function(cfg.function, cfg.import_timeout_s), cfg.function,
                             os.environ.get(cfg.token_env, ""), cfg.host, cfg.port, limits)
    except (TetherError, OSError) as exc:
        print(f"tether: error: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
    print(f"reward server: http://{cfg.host}:{server.server_address[1]}/score ({cfg.function})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
