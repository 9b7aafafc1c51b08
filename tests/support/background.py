"""Run async servers on their own event loop in a daemon thread.

Test servers (the token server, the fault proxy, the misbehaving registry) must serve while a
test blocks in sync code or runs its own loop, so each gets a private loop in a thread.
:class:`BackgroundLoop` owns that thread: ``start(setup, teardown)`` returns once ``setup`` has
finished (raising what it raised), and ``stop()`` runs ``teardown`` and joins the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

START_TIMEOUT_SECONDS = 10.0


class BackgroundLoop:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        """The running loop, for ``call_soon_threadsafe``; None when stopped."""
        self._thread: threading.Thread | None = None

    def start(
        self,
        setup: Callable[[], Awaitable[None]],
        teardown: Callable[[], Awaitable[None]],
    ) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        loop = asyncio.new_event_loop()
        self.loop = loop
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as error:  # surfaced to start()'s caller
                errors.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(teardown())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS) or errors:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start") from (errors[0] if errors else None)

    def stop(self) -> None:
        """Stop the loop, run the teardown and join the thread (idempotent)."""
        loop, thread = self.loop, self._thread
        self.loop = self._thread = None
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_SECONDS)
