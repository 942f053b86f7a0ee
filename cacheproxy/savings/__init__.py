"""What the cache saved: a ledger of bytes and pulls, price tables as data, tiered
pricing, and the report, ``/metrics`` collector and dashboard built on them.

    ledger.py    the Accounting the serving path reports to; flushes to store.py
    store.py     SQLite (WAL) daily counters per upstream and repository
    prices.toml  charges, pull limits and registries, each with source and date
    prices.py    loads and checks them; resolves an upstream to what it pays
    tiers.py     monthly tiered pricing on cumulative volume (pure)
    report.py    the savings over a range of days (pure ``build``, blocking ``read``)
    render.py    the report as a text table or CSV
    metrics.py   Prometheus collector over the ledger's totals
    service.py   the running proxy's view (report without blocking, prices cached)
    dashboard.py GET /dashboard (dashboard.html) and /dashboard/data
"""
