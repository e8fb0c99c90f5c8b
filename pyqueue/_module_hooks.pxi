# Included by each extension module (_core, _topic, _log, _workq): each
# links its own copy of the C core, so process-wide settings of the core
# are made once per module (pyqueue._locks calls every module's).

def _set_lock_wait(seconds):
    """See pyqueue._locks."""
    set_lock_wait(seconds)


def _fault_rearm():
    """Test-only (fault builds): this module's copy of the core reads
    PYQUEUE_FAULT again at its next fault point."""
    pq_fault_rearm()
