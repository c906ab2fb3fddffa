"""Benchmarks of zoom-worker against its baselines, on the built-in Zoom simulator.

``python -m bench tokens|rate|overhead|latency|scrape|all`` (or ``bench/run``). Each benchmark
prints a table and writes ``bench/results/<name>.json`` and ``<name>.png``; ``all`` also
writes ``summary.json`` and ``summary.png``. They measure and show; none asserts on time.
Each runs against its own PostgreSQL database (``zoom_worker_bench``) and Redis databases
(10 for the broker, 13 for the governor; ``scrape`` uses ``zoom_worker_bench_scrape`` and no
Redis), so a deployment or a test run is never touched. Two runs on one machine keep apart with
``BENCH_DB_SUFFIX`` (appended to every benchmark database's name) and ``BENCH_REDIS_URL``.
"""
