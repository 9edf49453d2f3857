from inferd.scheduling.policy import decide, inline_threshold, plan_batch, queue_deadline


def test_plan_takes_whole_requests_up_to_the_maximum() -> None:
    assert plan_batch([3, 3, 3], 8) == (2, 6)
    assert plan_batch([1] * 40, 32) == (32, 32)
    assert plan_batch([5], 4) == (1, 5)  # never split: an oversized head goes alone


def test_plan_cuts_back_to_a_preferred_size() -> None:
    assert plan_batch([4, 4, 4, 2], 16, preferred=[8]) == (2, 8)
    assert plan_batch([3, 3], 16, preferred=[8]) == (2, 6)  # cannot hit 8: take what there is
    assert plan_batch([8, 8, 8, 8], 32, preferred=[16, 32]) == (4, 32)


def test_decide_never_waits_when_every_instance_is_idle() -> None:
    decision = decide(1, 0.0, free=1, busy=0, max_batch_size=32, preferred=(), max_delay_s=0.005)
    assert decision.dispatch


def test_decide_waits_for_company_while_other_instances_work() -> None:
    decision = decide(2, 0.001, free=1, busy=1, max_batch_size=32, preferred=(), max_delay_s=0.005)
    assert not decision.dispatch
    assert abs(decision.wait_s - 0.004) < 1e-9
    assert decide(2, 0.006, 1, 1, 32, (), 0.005).dispatch  # waited long enough
    assert decide(32, 0.0, 1, 1, 32, (), 0.005).dispatch  # full
    assert decide(8, 0.0, 1, 1, 32, (8,), 0.005).dispatch  # preferred size reached


def test_decide_holds_when_no_instance_is_free() -> None:
    decision = decide(10, 1.0, free=0, busy=2, max_batch_size=32, preferred=(), max_delay_s=0.0)
    assert not decision.dispatch and decision.wait_s is None


def test_inline_threshold_is_higher_with_one_cpu() -> None:
    assert inline_threshold(1) > inline_threshold(2) > 0


def test_queue_deadline_follows_tritons_queue_policy() -> None:
    """core's scheduler_utils.cc (PolicyQueue::Enqueue): the default timeout holds unless the model
    allows an override and the request's own is sooner; a request's later deadline never extends it."""
    now = 100.0
    assert queue_deadline(None, now, 1.0, allow_override=False) == 101.0
    assert queue_deadline(100.1, now, 1.0, allow_override=False) == 101.0  # ignored, shorter or not
    assert queue_deadline(110.0, now, 1.0, allow_override=False) == 101.0
    assert queue_deadline(100.1, now, 1.0, allow_override=True) == 100.1  # sooner: the request's
    assert queue_deadline(110.0, now, 1.0, allow_override=True) == 101.0  # later: the default's
    assert queue_deadline(100.1, now, 0.0, allow_override=False) == 100.1  # no default: the request's
    assert queue_deadline(None, now, 0.0, allow_override=True) is None
