//! The state folder: generations, checksummed files, the lock and the ledger.
