from inferd.scheduling.policy import decide, hold_or_send, inline_threshold, plan_batch, queue_deadline


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


def test_held_batch_waits_for_its_oldest_requests_delay_even_when_idle() -> None:
    """Triton's rules (core 73aad7c3, GetDynamicBatch), preferred sizes 2 and 6, max_batch_size 8."""
    assert hold_or_send([1], False, 0.5, 8, (2, 6), 10.0) == (0, 9.5)  # short of a preferred size: waits
    assert hold_or_send([1], False, 10.0, 8, (2, 6), 10.0) == (1, 0.0)  # its delay ran out
    assert hold_or_send([1], False, 0.0, 8, (2, 6), 10.0, drain=True) == (1, 0.0)  # the server drains
    assert hold_or_send([1], False, 0.0, 8, (2, 6), 0.0) == (1, 0.0)  # no delay: nothing to wait for


def test_held_batch_sends_the_largest_preferred_size_reached_at_once() -> None:
    assert hold_or_send([1, 1], False, 0.0, 8, (2, 6), 10.0) == (2, 0.0)
    assert hold_or_send([1, 1, 1], False, 0.0, 8, (2, 6), 10.0) == (2, 0.0)  # 3 is not preferred: 2 goes
    assert hold_or_send([2, 2, 2, 1], False, 0.0, 8, (2, 6), 10.0) == (3, 0.0)  # 6 is the largest reached
    assert hold_or_send([1] * 8, False, 0.0, 8, (), 10.0) == (8, 0.0)  # max_batch_size is the one preferred
    assert hold_or_send([1] * 7, False, 0.0, 8, (), 10.0) == (0, 10.0)


def test_held_batch_past_the_largest_preferred_size_sends_what_came_before() -> None:
    """A request that would take the batch past the largest preferred size ends it: the requests
    before it go (Triton's payload saturated), the rest wait."""
    assert hold_or_send([3, 4], False, 0.0, 8, (2, 6), 10.0) == (1, 0.0)
    assert hold_or_send([7], False, 0.0, 8, (2, 6), 10.0) == (1, 0.0)  # past the largest preferred alone


def test_held_batch_past_its_delay_takes_everything_that_fits() -> None:
    assert hold_or_send([3, 4], False, 10.0, 8, (2, 6), 10.0) == (2, 0.0)  # 7 rows, not cut back to 6
    assert hold_or_send([3, 4, 2], False, 10.0, 8, (2, 6), 10.0) == (2, 0.0)  # the next one would pass 8


def test_held_batch_goes_when_a_request_of_another_shape_follows_it() -> None:
    assert hold_or_send([1], True, 0.0, 8, (2, 6), 10.0) == (1, 0.0)
    assert hold_or_send([1, 1, 1], True, 0.0, 8, (2, 6), 10.0) == (2, 0.0)  # a preferred size still first


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
