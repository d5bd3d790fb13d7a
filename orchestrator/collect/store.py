"""The label database: pairs to compare, which annotator was shown which pair, and the judgements.

SQLAlchemy Core over any database URL: SQLite by default (``<output_dir>/collect/labels.db``),
PostgreSQL or another server for a team (``collect.database_url``). Three tables:

- ``pairs``: id (hash of prompt and both responses), position (load order), prompt (JSON: a string
  or chat messages), response_a, response_b, source, priority (lower is served first).
- ``assignments``: (pair, annotator) served, with the left/right order shown (``swapped``: response
  b on the left) and when it was served. A pair gets at most ``overlap`` annotators.
- ``judgements``: pair, annotator, choice (``a`` | ``b`` | ``tie`` | ``skip``), which response was on
  the left, note, HHH tags, time (epoch seconds) and seconds taken (served -> judged). At most one per
  (pair, annotator): a unique constraint, so a repeated or concurrent post cannot add a second.

Every change runs in its own transaction, committed before the call returns. Serving and judging
hold one lock in this process (the server is one process), so concurrent requests cannot hand one
pair to more annotators than ``overlap`` allows.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import ConfigError

CHOICES = ("a", "b", "tie", "skip")
TAGS = ("helpful", "harmless", "honest")

META = sa.MetaData()
PAIRS = sa.Table(
    "pairs", META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("response_a", sa.Text, nullable=False),
    sa.Column("response_b", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("priority", sa.Float, nullable=False, default=0.0),
)
ASSIGNMENTS = sa.Table(
    "assignments", META,
    sa.Column("pair_id", sa.String(32), sa.ForeignKey("pairs.id"), primary_key=True),
    sa.Column("annotator", sa.String(64), primary_key=True),
    sa.Column("swapped", sa.Boolean, nullable=False),
    sa.Column("served_at", sa.Float, nullable=False),
)
JUDGEMENTS = sa.Table(
    "judgements", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pair_id", sa.String(32), sa.ForeignKey("pairs.id"), nullable=False),
    sa.Column("annotator", sa.String(64), nullable=False),
    sa.Column("choice", sa.String(8), nullable=False),
    sa.Column("left", sa.String(1), nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("tags", sa.String(64), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.UniqueConstraint("pair_id", "annotator", name="one_judgement_per_annotator"),
)


def pair_id(prompt, response_a: str, response_b: str) -> str:
    """A stable id of a pair (the same rows loaded twice get the same ids)."""
    return hashlib.sha256(json.dumps([prompt, response_a, response_b]).encode()).hexdigest()[:32]


@dataclass
class Served:
    """A pair as one annotator sees it: ``swapped`` puts response b on the left."""

    pair_id: str
    prompt: object
    response_a: str
    response_b: str
    swapped: bool

    @property
    def left(self) -> str:
        return self.response_b if self.swapped else self.response_a

    @property
    def right(self) -> str:
        return self.response_a if self.swapped else self.response_b


class Conflict(Exception):
    """A judgement that cannot be stored (pair not served to this annotator, or already judged)."""


class LabelStore:
    """The label database at ``url``; ``overlap`` annotators per pair."""

    def __init__(self, url: str, overlap: int = 1, seed: int = 0):
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if url.startswith("sqlite") else {}
        try:
            self.engine = sa.create_engine(url, future=True, **kwargs)
            META.create_all(self.engine)
        except (sa.exc.SQLAlchemyError, ImportError) as exc:  # no server, no driver, bad credentials
            shown = sa.engine.make_url(url).__repr__()  # the password masked
            detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"collect.database_url: cannot open the label database {shown}: {type(exc).__name__}: "
                              f"{detail}") from None
        self.overlap = overlap
        self.lock = threading.Lock()
        self._rng = random.Random(seed)

    # ---- pairs -------------------------------------------------------------------------------
    def count_pairs(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(PAIRS)).scalar_one()

    def add_pairs(self, rows: list[dict], source: str) -> int:
        """Store ``{"prompt", "response_a", "response_b", "priority"?}`` rows (a pair already stored is
        kept as it is); returns how many were new."""
        with self.lock, self.engine.begin() as conn:
            known = set(conn.execute(sa.select(PAIRS.c.id)).scalars())
            start = conn.execute(sa.select(sa.func.count()).select_from(PAIRS)).scalar_one()
            new = []
            for row in rows:
                pid = pair_id(row["prompt"], row["response_a"], row["response_b"])
                if pid in known:
                    continue
                known.add(pid)
                new.append({"id": pid, "position": start + len(new), "prompt": json.dumps(row["prompt"]),
                            "response_a": row["response_a"], "response_b": row["response_b"], "source": row.get("source", source),
                            "priority": float(row.get("priority", 0.0))})
            if new:
                conn.execute(PAIRS.insert(), new)
        return len(new)

    def pairs(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(PAIRS).order_by(PAIRS.c.position)).mappings().all()
        return [{**r, "prompt": json.loads(r["prompt"])} for r in rows]

    # ---- serving -----------------------------------------------------------------------------
    def next_pair(self, annotator: str) -> Served | None:
        """The pair to show ``annotator`` now: one served to them and not yet judged, else the first
        (by priority, then load order) that they have not seen and fewer than ``overlap`` annotators
        were given; None when there is none left for them."""
        with self.lock, self.engine.begin() as conn:
            judged = sa.select(JUDGEMENTS.c.pair_id).where(JUDGEMENTS.c.annotator == annotator)
            pending = conn.execute(
                sa.select(ASSIGNMENTS.c.pair_id, ASSIGNMENTS.c.swapped)
                .where(ASSIGNMENTS.c.annotator == annotator, ASSIGNMENTS.c.pair_id.not_in(judged))
                .order_by(ASSIGNMENTS.c.served_at)).first()
            if pending is None:
                mine = sa.select(ASSIGNMENTS.c.pair_id).where(ASSIGNMENTS.c.annotator == annotator)
                taken = (sa.select(ASSIGNMENTS.c.pair_id).group_by(ASSIGNMENTS.c.pair_id)
                         .having(sa.func.count() >= self.overlap))
                row = conn.execute(sa.select(PAIRS.c.id).where(PAIRS.c.id.not_in(mine), PAIRS.c.id.not_in(taken))
                                   .order_by(PAIRS.c.priority, PAIRS.c.position).limit(1)).first()
                if row is None:
                    return None
                swapped = self._rng.random() < 0.5
                conn.execute(ASSIGNMENTS.insert().values(pair_id=row.id, annotator=annotator, swapped=swapped,
                                                         served_at=time.time()))
                pending = (row.id, swapped)
            pair = conn.execute(sa.select(PAIRS).where(PAIRS.c.id == pending[0])).mappings().one()
        return Served(pair["id"], json.loads(pair["prompt"]), pair["response_a"], pair["response_b"], bool(pending[1]))

    def judge(self, annotator: str, pid: str, side: str, note: str = "", tags: tuple = ()) -> dict:
        """Store ``annotator``'s judgement of pair ``pid``: ``side`` is ``left`` | ``right`` | ``tie`` |
        ``skip`` as they saw it; committed before returning. Raises Conflict when the pair was not
        served to them or they judged it already."""
        with self.lock, self.engine.begin() as conn:
            served = conn.execute(sa.select(ASSIGNMENTS).where(ASSIGNMENTS.c.pair_id == pid,
                                                               ASSIGNMENTS.c.annotator == annotator)).mappings().first()
            if served is None:
                raise Conflict("this pair was not served to you")
            left = "b" if served["swapped"] else "a"
            choice = {"left": left, "right": "a" if left == "b" else "b"}.get(side, side)
            now = time.time()
            row = {"pair_id": pid, "annotator": annotator, "choice": choice, "left": left, "note": note,
                   "tags": ",".join(t for t in TAGS if t in tags), "created_at": now,
                   "seconds": max(0.0, now - served["served_at"])}
            try:
                conn.execute(JUDGEMENTS.insert().values(**row))
            except IntegrityError:
                raise Conflict("you have already judged this pair") from None
        return row

    # ---- reading back ------------------------------------------------------------------------
    def judgements(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(JUDGEMENTS).order_by(JUDGEMENTS.c.id)).mappings()]

    def progress(self, annotator: str | None = None) -> dict:
        """``done`` / ``total`` judgements over all pairs (``overlap`` each), and the annotator's own."""
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(PAIRS)).scalar_one() * self.overlap
            done = conn.execute(sa.select(sa.func.count()).select_from(JUDGEMENTS)).scalar_one()
            mine = conn.execute(sa.select(sa.func.count()).select_from(JUDGEMENTS)
                                .where(JUDGEMENTS.c.annotator == annotator)).scalar_one() if annotator else 0
        return {"done": done, "total": total, "mine": mine}
