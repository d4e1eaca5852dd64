"""`python -m illustrious.arena images=<folder> db=<file.sqlite>` (console script `illustrious-arena`): serve the
arena on http://127.0.0.1:8765/ until Ctrl-C; `action=export` writes the ratings CSV and plot instead.
Settings: illustrious/conf/arena.yaml."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from illustrious.config import CONF_DIR
from illustrious.errors import ConfigError, reported_config_errors

log = logging.getLogger(__name__)
ACTIONS = ("serve", "export")


def build(cfg: DictConfig):
    """(Arena, ArenaStore) from the config: the catalog scanned, the store opened."""
    from illustrious.arena.catalog import scan
    from illustrious.arena.pairing import Pairing
    from illustrious.arena.ratings import EloSettings, TrueSkillSettings
    from illustrious.arena.server import Arena
    from illustrious.arena.store import ArenaStore

    catalog = scan(cfg.images, cfg.prompts)
    if catalog.skipped:
        log.warning("arena: skipped %d file(s) that do not follow <checkpoint>/<prompt_index>_<seed>.png, "
                    "e.g. %s (%s)", len(catalog.skipped), *catalog.skipped[0])
    store = ArenaStore(cfg.db)
    pairing = Pairing(catalog, list(cfg.kinds), ffa_size=cfg.ffa_size, seed=cfg.seed)
    elo = EloSettings(k=float(cfg.elo.k), initial=float(cfg.elo.initial))
    trueskill = TrueSkillSettings(**{k: float(v) for k, v in cfg.trueskill.items()})
    trueskill.environment()  # checks the settings now, before serving
    return Arena(catalog, store, pairing, elo, trueskill), store


def run(cfg: DictConfig, ready=None) -> None:
    """The command's body; `ready(server)` (tests) is called once the server listens."""
    if cfg.action not in ACTIONS:
        raise ConfigError(f"action={cfg.action}: choose one of {ACTIONS}.")
    arena, store = build(cfg)
    try:
        if cfg.action == "export":
            from illustrious.arena.export import write_exports

            out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.db).expanduser().parent
            kinds = sorted({vote.kind for vote in store.votes()})
            for kind in [None, *kinds]:  # all votes, then each kind of match on its own
                rows, count = arena.ratings(kind)
                for path in write_exports(rows, out_dir, "arena_ratings" + (f"_{kind}" if kind else "")):
                    log.info("wrote %s (%d votes)", path, count)
            return
        from illustrious.arena.server import make_server

        if not 0 <= cfg.port <= 65535:
            raise ConfigError(f"port={cfg.port}: must be 0..65535 (0 picks a free port).")
        try:
            server = make_server(arena, cfg.host, cfg.port, allow_remote=cfg.allow_remote)
        except OSError as e:
            raise ConfigError(f"host={cfg.host} port={cfg.port}: cannot listen there ({e.strerror or e}); choose "
                              "another port= (0 picks a free one).") from None
        log.info("arena: %d checkpoints, %d votes so far; open %s (Ctrl-C stops; every vote is already saved)",
                 len(arena.catalog.checkpoints), store.vote_count(), server.url)
        print(f"ARENA_URL {server.url}", flush=True)  # one machine-readable line (port=0 picks a free port)
        if ready is not None:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("arena: stopped")
        finally:
            server.server_close()
    finally:
        store.close()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="arena")
def main(cfg: DictConfig) -> None:
    with reported_config_errors():
        run(cfg)


def entry() -> None:
    main()
