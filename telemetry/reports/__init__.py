"""Reports over the ledger: chargeback (from daily rollups), lookup (by id), HTML."""
