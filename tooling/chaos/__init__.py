"""The chaos run behind `outbox_chaos`: the faults (`run`) and the invariants checked after them (`checks`)."""
