import threading

from core.cache import two_tier


def test_a_waiter_computes_itself_rather_than_wait_on_a_stuck_computation():
    """Found by chat/tests/test_live_pool.py: threads that held a database connection
    waited, with no bound, on the thread computing the model registry, which was
    waiting for a connection: a deadlock until the pool gave up (503s)."""
    computing, release_first = threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def first_compute() -> str:
        computing.set()
        release_first.wait(timeout=30)
        return "first"

    def call(name: str, compute) -> None:
        results[name] = two_tier.get_or_compute("stuck-test", "k", compute, ttl=10)

    first = threading.Thread(target=call, args=("first", first_compute))
    first.start()
    assert computing.wait(timeout=30)
    second = threading.Thread(target=call, args=("second", lambda: "second"))
    second.start()
    second.join(timeout=30)
    finished_while_first_was_stuck = not second.is_alive()
    release_first.set()
    first.join(timeout=30)
    assert finished_while_first_was_stuck
    assert results == {"first": "first", "second": "second"}
