"""The feature reference's refresh thread: a failed check keeps the replica serving and is shown, the next
check tries again, and closing stops the thread."""

import threading

from serving.reference import ReferenceRefresher


def settled(check, tries: int = 500) -> None:
    pause = threading.Event()
    while not check() and tries:
        pause.wait(0.01)
        tries -= 1


def test_a_failed_refresh_is_shown_and_the_next_check_tries_again():
    outcomes = iter([OSError("store unreachable"), True, False])
    checked = threading.Semaphore(0)
    release = threading.Event()
    seen: list[dict] = []

    def refresh() -> bool:
        if seen:  # the checks after the first wait for the test to have read the status between them
            release.wait(10)
            release.clear()
        seen.append({})
        outcome = next(outcomes)
        checked.release()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    refresher = ReferenceRefresher(refresh, every=0.01, name="test")
    try:
        assert checked.acquire(timeout=10)
        settled(lambda: refresher.status()["last_error"])  # recorded just after `refresh` raised
        assert refresher.status() == {"every_s": 0.01, "rebuilt": 0, "last_error": "OSError: store unreachable"}
        release.set()
        assert checked.acquire(timeout=10)
        settled(lambda: refresher.status()["rebuilt"])
        assert refresher.status() == {"every_s": 0.01, "rebuilt": 1, "last_error": None}
    finally:
        refresher.close()
        release.set()


def test_no_thread_when_refresh_is_off():
    before = {t.name for t in threading.enumerate()}
    refresher = ReferenceRefresher(lambda: True, every=0, name="off")
    assert not {t.name for t in threading.enumerate()} - before
    assert refresher.status() == {"every_s": 0, "rebuilt": 0, "last_error": None}
