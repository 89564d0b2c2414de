"""Plugin bundles the way Tyk deploys them: fetched, verified, extracted, cached.

One job per module: `fetch` (download with retries and conditional GET),
`verify` (checksum and signature), `extract` (safe unzip), `cache` (Coproc's
content-addressed cache and the refs file the worker reads), `installer`
(one bundle name: fetch or reuse, extract, verify, cache), `store` (the
per-instance `BundleStore` the supervisor calls: what each API loads),
`gate` (the supervisor's side), `build` (`coproc bundle build|verify`).
"""

from supervisor.bundles.store import BundleReport, BundleStore, Outcome

__all__ = ["BundleReport", "BundleStore", "Outcome"]
