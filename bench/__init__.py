"""oxiserve's benchmark kit: a load generator for any OpenAI-compatible server and a
side-by-side comparison with reference servers (``bench/peers/``).

    python -m bench run --scenario chat-stream --concurrency 32 --duration 10
    python -m bench run --url http://127.0.0.1:8000 --scenario chat --rate 200 --requests 2000
    python -m bench compare            # what `make bench` runs; --quick for a short run
    python -m bench footprint          # cold start, RSS, import time only

Results go to ``bench/results/<UTC stamp>-<scenario>.json``.  Modules: ``client`` (HTTP/1.1
and SSE over asyncio streams), ``scenarios``/``assistants`` (what each request sends and how
its answer is measured), ``load`` (closed loop or Poisson arrivals), ``stats``, ``procs``
(local servers, pinning, /proc figures), ``run``/``compare``/``footprint`` (the commands),
``report``/``compare_report``/``progress``/``plot`` (output).
"""
