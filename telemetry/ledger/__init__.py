"""The usage ledger: SQL rows per attempt, daily rollups, spool, retention."""
