"""The arena (Illustrious paper, section 5): people compare images from several checkpoints for the same
prompt in a local web page; every vote is kept in SQLite and ratings are recomputed from the vote log.

    catalog.py   the image folder: <root>/<checkpoint>/<prompt_index>_<seed>.png + <root>/prompts.json
    pairing.py   which images meet: fixed-characteristics duels, free-prompt duels, 4-way free-for-alls
    store.py     SQLite (WAL): served matches with one-time tokens, one committed transaction per vote
    votes.py     a vote's JSON body -> ranks (validated against the match it answers)
    ratings.py   Elo (K, draws 0.5, time-weighted average), TrueSkill (mu, sigma, mu - 3 sigma)
    page.py      the HTML (everything escaped), served by server.py (standard library http.server)
    export.py    ratings -> CSV and a PNG plot
    cli.py       `python -m illustrious.arena images=<folder> db=<file.sqlite>` (console: illustrious-arena)
"""
