"""gevent.pool.Pool's surface on a ggopool Pool: spawn, apply, map, imap, add, join..."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from gevent import kill as gevent_kill
from gevent import spawn_raw
from gevent.event import Event
from gevent.lock import DummySemaphore, Semaphore
from gevent.queue import UnboundQueue
from greenlet import GreenletExit, getcurrent
from greenlet import greenlet as RawGreenlet

from ggopool._config import check_int_at_least, check_timeout
from ggopool._describe import short_repr
from ggopool._entry import NO_KWARGS
from ggopool._errors import PoolClosed, PoolFull
from ggopool._task import _LATER, _UNSTARTED, as_exception, check_exception
from ggopool._task import Task as _Task
from ggopool._threads import allocate_lock as _allocate_lock
from ggopool._threads import get_ident as _get_ident
from ggopool._worker import LEAVING

if TYPE_CHECKING:
    from gevent.hub import Hub

    from ggopool._config import Config
    from ggopool._entry import Entry
    from ggopool._pool import Pool
    from ggopool._task import Task
    from ggopool._worker import Worker

P = ParamSpec("P")
T = TypeVar("T")


class _Membership:
    """A pool's members, the Event that wakes those waiting for room among them, and
    the `RoomSignal` a gevent server links to."""

    __slots__ = ("dying", "left", "pool", "room", "signal", "tasks")

    def __init__(self, pool: GeventPoolMixin) -> None:
        self.tasks: set[Any] = set()
        # Members `killone` has killed: not killed again by killone or Pool.kill, as
        # gevent's Group keeps its dying greenlets.
        self.dying: set[Any] = set()
        self.room: Event | None = None  # set when a member leaves, if someone waits
        self.signal: RoomSignal | None = None  # made when a server first asks for it
        self.pool = weakref.ref(pool)  # not the pool itself: it would never be collected
        # One bound method for every member's hook, not one made per task.
        self.left: Callable[[Any], None] = self._left

    def _left(self, task: Any) -> None:
        self.tasks.discard(task)
        self.dying.discard(task)
        if self.room is not None or self.signal is not None:
            pool = self.pool()
            if pool is not None:
                self.check_room(pool._cap)

    def check_room(self, cap: int, cap_changed: bool = False) -> None:
        room = self.room
        if room is not None and len(self.tasks) < cap:
            self.room = None
            room.set()
        signal = self.signal
        if signal is not None and signal._links:
            # A member leaving wakes the links only as the pool stops being full (a
            # server stops accepting only when it is full), not on every member's end.
            n = len(self.tasks)
            if n == cap - 1 or (cap_changed and n < cap):
                signal._schedule()


class _WaitingThread:
    """A thread blocked in `spawn` until its task is queued or refused: told once, by
    whichever comes first (the greenlet that queues it, or the exit drain's refusal)."""

    __slots__ = ("_claimed", "failed", "told")

    def __init__(self) -> None:
        self.failed: BaseException | None = None
        self.told = _allocate_lock()  # released when the thread may go on
        self.told.acquire()
        self._claimed = _allocate_lock()  # acquired by the one who tells

    def claim(self) -> bool:
        """True for the first caller only (from any thread)."""
        return bool(self._claimed.acquire(blocking=False))

    def tell(self, exc: BaseException) -> None:
        """The thread raises ``exc``, unless it was told already."""
        if self.claim():
            self.failed = exc
            self.told.release()


class RoomSignal:
    """What a gevent server links to, to learn that its pool has room again.

    A gevent server given ``spawn=pool`` stops accepting connections while
    ``pool.full()`` and waits for a connection to end before it accepts again. It
    learns of that through ``pool._semaphore``, which in ``gevent.pool.Pool`` is the
    Semaphore that counts free places. ``gevent.baseserver.BaseServer`` (gevent 26.9.0,
    the version tested) reads it in three places, and uses only ``rawlink`` and ``unlink``:

    * ``set_spawn`` (the server's construction): ``pool._semaphore.rawlink(cb)``;
    * ``_do_read``, when ``pool.full()``: it stops accepting, then ``rawlink(cb)`` again;
    * ``close`` (and so ``stop``): ``pool._semaphore.unlink(cb)``.

    ``cb`` starts accepting again if the server is started. A ggopool pool's
    ``_semaphore`` is this object, which offers exactly that: `rawlink` and `unlink`,
    with a gevent Semaphore's meaning. It is not a semaphore: it cannot be acquired.

    Rules:

    * A callback linked is called from the hub, with this object as its argument, soon
      after the pool stops being full (a member ends while ``cap`` members were held,
      or `Pool.set_cap` makes room), and soon after `rawlink` if the pool has room
      then. It stays linked until `unlink`, as with a Semaphore.
    * Linking a callback already linked does nothing more (a server links the same
      one each time its pool fills); `unlink` of one not linked does nothing.
    * A closed pool takes no new link: ``rawlink`` raises `PoolClosed`, so a server
      given a pool closed before it is handed over fails at its construction.
    * An exception from a callback goes to the hub's error handler, as gevent's do,
      and the other callbacks are still called.
    """

    __slots__ = ("_links", "_membership", "_scheduled")

    def __init__(self, membership: _Membership) -> None:
        self._links: list[Callable[[Any], object]] = []
        self._membership = membership
        self._scheduled = False

    def rawlink(self, callback: Callable[[Any], object]) -> None:
        """Call ``callback(self)`` from the hub whenever the pool has room again."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if callback in self._links:
            return
        pool = self._membership.pool()
        if pool is None:
            return
        if cast("Pool", pool)._closed:
            raise PoolClosed(
                f"pool {pool._name!r} is closed: a closed pool cannot take a server's "
                "connections (give the server an open pool)"
            )
        self._links.append(callback)
        if len(self._membership.tasks) < pool._cap:
            self._schedule()

    def unlink(self, callback: Callable[[Any], object]) -> None:
        """Stop calling ``callback``."""
        if callback in self._links:
            self._links.remove(callback)

    def linkcount(self) -> int:
        """How many callbacks are linked."""
        return len(self._links)

    def _schedule(self) -> None:
        if not self._scheduled:
            pool = self._membership.pool()
            if pool is not None:
                self._scheduled = True
                pool._hub.loop.run_callback(self._notify)

    def _notify(self) -> None:
        self._scheduled = False
        membership = self._membership
        pool = membership.pool()
        if pool is None:
            return
        for callback in list(self._links):
            # As a Semaphore's links: each only while there is room, and still linked.
            if len(membership.tasks) >= pool._cap or callback not in self._links:
                continue
            try:
                callback(self)
            except BaseException:  # noqa: BLE001 - reported as gevent reports a link's error
                pool._hub.handle_error(callback, *sys.exc_info())


_NO_MEMBERS: frozenset[Any] = frozenset()


class GeventPoolMixin:
    """What ``gevent.pool.Pool`` offers, with gevent's meaning, for `Pool` to inherit.

    A pool's *members* are the tasks made by `spawn` (and by ``apply``, ``map``,
    ``imap``... which spawn) that are queued or running, and what `add` was given, until
    it finishes. ``len``, ``in``, iteration, `free_count`, `full` and `wait_available`
    count members; ``go`` and ``submit`` tasks are not members.
    """

    if TYPE_CHECKING:
        # What the mixin uses of Pool.
        _cap: int
        _closed: bool
        _name: str
        _hub: Hub
        _config: Config
        _greenlets: set[Worker]
        _ident: int
        _waiting_threads: set[_WaitingThread]

        def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
        def _queue(self, task: Entry) -> None: ...
        def _accept(self, task: Entry) -> None: ...
        def _accepting_from_any_thread(self) -> contextlib.AbstractContextManager[None]: ...

    # The members' one owner: made when the pool first has one (None until then).
    __slots__ = ("_membership_or_none",)
    _membership_or_none: _Membership | None

    def _reset_members(self) -> None:
        """Forget the members (Pool._reset: a new pool, or a forked child's)."""
        self._membership_or_none = None

    def _membership(self) -> _Membership:
        membership = self._membership_or_none
        if membership is None:
            membership = self._membership_or_none = _Membership(self)
        return membership

    @property
    def _semaphore(self) -> RoomSignal:
        """The `RoomSignal` gevent's servers read as ``pool._semaphore``; see there.

        A gevent server given ``spawn=pool`` links to it to resume accepting when a
        connection ends and the pool is no longer `full`. Made on first use.
        """
        membership = self._membership()
        signal = membership.signal
        if signal is None:
            signal = membership.signal = RoomSignal(membership)
        return signal

    @property
    def _members(self) -> set[Any] | frozenset[Any]:
        # For reading: a pool that never had a member gets no entry for being asked.
        membership = self._membership_or_none
        return _NO_MEMBERS if membership is None else membership.tasks

    # -- members -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The most members the pool holds before it is `full`: its cap."""
        return self._cap

    def __len__(self) -> int:
        """How many members the pool holds (spawned tasks queued or running, and added)."""
        return len(self._members)

    def __bool__(self) -> bool:
        # A pool is true even when empty (gevent's is false): `get_pool` returns
        # ``Pool | None``, and ``if pool:`` must keep meaning "there is a pool".
        return True

    def __contains__(self, item: object) -> bool:
        """True for a member, and for one of the pool's worker greenlets (so that
        ``gevent.getcurrent() in pool`` tells whether the caller runs in one of its tasks)."""
        return item in self._members or item in self._greenlets

    def __iter__(self) -> Iterator[Any]:
        """The members, in no particular order (a snapshot: the pool may change meanwhile)."""
        return iter(list(self._members))

    def free_count(self) -> int:
        """How many more members the pool takes before it is `full`."""
        return max(0, self._cap - len(self._members))

    def full(self) -> bool:
        """True when the pool holds ``cap`` members: `spawn` would wait, if it waits.

        Also True once the pool is closed (it takes no new member): a gevent server given
        the pool (``spawn=pool``) asks ``full()`` before each accept, so when its pool is
        closed it stops accepting rather than have each new connection's spawn raise
        `PoolClosed` into the hub.
        """
        return len(self._members) >= self._cap or self._closed

    def wait_available(self, timeout: float | None = None) -> int:
        """Wait until the pool is not `full` or ``timeout`` passes; return `free_count`."""
        self._wait_for_room(True, check_timeout(timeout))
        return self.free_count()

    def add(self, task: Any, blocking: bool = True, timeout: float | None = None) -> None:
        """Make ``task`` (a `Task`, or a gevent greenlet) a member until it finishes.

        When the pool is `full` it waits for room (up to ``timeout`` seconds) or, with
        ``blocking=False``, raises `PoolFull` at once, as gevent's ``Pool.add`` does.
        """
        if not isinstance(task, (_Task, RawGreenlet)):
            raise TypeError(
                f"add() takes a ggopool Task or a greenlet, got {short_repr(task)}"
                f" of type {type(task).__qualname__}"
            )
        timeout = check_timeout(timeout)
        if not self._wait_for_room(blocking, timeout):
            raise PoolFull(f"pool {self._name!r} is full: it holds {self._cap} members")
        self._track(task)

    def start(self, task: Any, blocking: bool = True, timeout: float | None = None) -> None:
        """`add` ``task``, then ``task.start()`` (which queues a `Task` made by `task`,
        and does nothing to one already queued)."""
        if not callable(getattr(task, "start", None)):
            raise TypeError(
                f"start() takes a ggopool Task or a gevent Greenlet (something with a start()"
                f" method), got {short_repr(task)} of type {type(task).__qualname__}"
            )
        self.add(task, blocking, timeout)
        task.start()

    def discard(self, task: Any) -> None:
        """Stop counting ``task`` as a member; it runs on."""
        membership = self._membership()
        membership.left(task)
        unlink = getattr(task, "unlink", None)
        if unlink is not None:
            unlink(membership.left)

    def _track(self, task: Any) -> None:
        membership = self._membership()
        membership.tasks.add(task)
        add_hook = getattr(task, "_add_hook", None)
        if add_hook is not None:
            add_hook(membership.left)  # a Task: synchronously, as it finishes
            return
        rawlink = getattr(task, "rawlink", None)
        if rawlink is not None:
            rawlink(membership.left)  # a gevent Greenlet: from the hub
        # A raw greenlet stays a member until discard(), as in gevent.

    def _check_room(self) -> None:
        membership = self._membership_or_none
        if membership is not None:
            membership.check_room(self._cap, cap_changed=True)

    def _wait_for_room(self, blocking: bool, timeout: float | None) -> bool:
        """Wait until the pool holds fewer than ``cap`` members: True, or False if
        ``blocking`` is False or ``timeout`` passed first."""
        if len(self._members) < self._cap:
            return True
        if not blocking:
            return False
        if getcurrent() is self._hub:
            raise PoolFull(
                f"pool {self._name!r} is full: it holds {self._cap} members, "
                "and the hub cannot wait for room"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        membership = self._membership()
        while len(membership.tasks) >= self._cap:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if membership.room is None:
                membership.room = Event()
            membership.room.wait(remaining)
            membership = self._membership()  # a fork may have replaced it meanwhile
        return True

    # -- spawning ----------------------------------------------------------------------

    def spawn(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        """Queue ``fn(*args, **kwargs)`` as a member of the pool, as ``gevent.pool.Pool``'s
        ``spawn`` does, and return its `Task`.

        With ``Config(spawn_waits_when_full=True)`` it first waits while the pool is
        `full`, as gevent's does; otherwise it never waits. Called from another thread,
        that thread waits (blocked, while the pool's hub runs on), then the task is
        queued and ``spawn`` returns it. A task that raises is reported
        as a ``gevent.spawn`` greenlet's failure is: to the pool's panic handler if one is
        set, else through the hub, and ``get()`` raises it too.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        return self._spawn(fn, args, kwargs, self._config.spawn_waits_when_full)

    def _spawn(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait: bool,
        report: bool = True,
    ) -> Task[T]:
        """Queue a member task. ``report``: a failure is reported as gevent reports a
        greenlet's (spawn, apply_async); without it, only the caller who reads the
        result gets it (apply, map, imap, which raise it)."""
        if wait and _get_ident() != self._ident:
            return self._spawn_from_thread(fn, args, kwargs, report)
        if wait:
            self._wait_for_room(True, None)
        task: Task[T] = _Task(cast("Pool", self), fn, args, kwargs, contextvars.copy_context())
        task._spawned = report
        self._enqueue(task)
        return task

    def task(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
        """Make a `Task` of ``fn(*args, **kwargs)`` on this pool without queuing it, as
        ``gevent.Greenlet(fn, *args, **kwargs)`` makes a greenlet without starting it.

        Example::

            task = pool.task(handle, conn)   # g = gevent.Greenlet(handle, conn)
            task.link(done)
            task.start()                     # g.start(); or pool.start(task)

        Rules:

        * Until it is started the task is not queued, not `Task.ready`, not ``started`` and
          false, as an unstarted greenlet; it is not a member of the pool unless `add`
          was given it.
        * ``task.start()`` queues it on this pool as a member, as `spawn` would have
          (it never waits for room); ``task.start_later(seconds)`` does so in
          ``seconds``. Starting it again does nothing.
        * Killed or cancelled before it starts, it never runs: its outcome is the kill's
          (see `Task`), and ``start()`` then does nothing.
        * `start` (``pool.start(task)``) makes it a member, waiting for room as `add`
          does, then starts it; `add` makes it a member without starting it.
        * A failure is reported as a `spawn` task's.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task: Task[T] = _Task(cast("Pool", self), fn, args, kwargs, contextvars.copy_context())
        task._spawned = True
        task._state = _UNSTARTED
        return task

    def _spawn_from_thread(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], report: bool
    ) -> Task[T]:
        """`_spawn` with waiting, from another thread: the members belong to the pool's
        thread, so a greenlet there waits for room and queues the task, while this thread
        blocks on a real lock until it has (or has failed to, whose exception it raises).

        After the exit drain the hub never runs again: a thread still waiting then gets
        PoolClosed (see `_refuse_waiting_threads`), and one that comes later gets it at once."""
        task: Task[T] = _Task(cast("Pool", self), fn, args, kwargs, contextvars.copy_context())
        task._spawned = report
        waiter = _WaitingThread()
        with self._accepting_from_any_thread():
            self._waiting_threads.add(waiter)  # seen by the refusal from now on
        self._hub.loop.run_callback_threadsafe(spawn_raw, self._queue_when_room, task, waiter)
        waiter.told.acquire()  # blocks this thread only
        if waiter.failed is not None:
            raise waiter.failed
        return task

    def _queue_when_room(self, task: Task[Any], waiter: _WaitingThread) -> None:
        # In a greenlet of the pool's thread, for _spawn_from_thread.
        try:
            self._wait_for_room(True, None)
            if waiter.claim():  # not refused meanwhile
                try:
                    self._enqueue(task)
                except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
                    waiter.failed = exc
                waiter.told.release()
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread instead
            waiter.tell(exc)
        finally:
            self._waiting_threads.discard(waiter)

    def _refuse_waiting_threads(self, exc: BaseException) -> None:
        """The exit drain has run: every thread still waiting in `spawn` for room gets
        ``exc`` (PoolClosed), its task never queued."""
        for waiter in list(self._waiting_threads):
            waiter.tell(exc)

    def _enqueue(self, task: Task[Any], accepted: bool = False) -> None:
        """Queue a member task made by `_spawn` (or by ``spawn_later``, or started).
        ``accepted``: accepted before (a ``spawn_later`` task whose time has come), so never
        refused now, as `Pool._accept` does."""
        ctx = task._ctx
        assert ctx is not None  # a task holds its context until it is done
        # A member before it is queued: queued from another thread, it may run (and its
        # hooks with it) on the pool's thread at once. One `add` gave already stays one.
        if task not in self._members:
            self._track(task)
        entry = (ctx, task._run, (task._args, task._kwargs), NO_KWARGS)
        try:
            if accepted:
                self._accept(entry)
            else:
                self._queue(entry)
        except BaseException:
            self._membership().left(task)  # refused (a closed pool): never a member
            raise

    def apply(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] | None = None,
        kwds: dict[str, Any] | None = None,
    ) -> T:
        """``fn(*args, **kwds)`` run on the pool; return its value or raise its exception.

        Called from one of the pool's own tasks it runs ``fn`` at once, in the caller, as
        gevent's does (waiting for a worker there could wait for itself).
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        args, kwds = _args(args, kwds)
        if getcurrent() in self._greenlets:
            return fn(*args, **kwds)
        return self._spawn(fn, args, kwds, self._config.spawn_waits_when_full, False).get()

    def apply_cb(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] | None = None,
        kwds: dict[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
    ) -> T:
        """`apply`, then ``callback(value)`` in a `go` task of the default pool, if given."""
        _check_callback(callback)
        result = self.apply(fn, args, kwds)
        if callback is not None:
            _default_pool().go(callback, result)
        return result

    def apply_async(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] | None = None,
        kwds: dict[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
    ) -> Task[T]:
        """Queue ``fn(*args, **kwds)`` as a member and return its `Task` at once (it never
        waits, even when the pool is full); if it succeeds, ``callback(value)`` runs in a
        `go` task of the default pool."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        _check_callback(callback)
        args, kwds = _args(args, kwds)
        task = self._spawn(fn, args, kwds, False)
        if callback is not None:
            task._add_hook(_PassValue(callback))
        return task

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
        """``[fn(*xs) for xs in zip(*iterables)]``, run on the pool; results in input order.

        Each call is spawned as a member (waiting for room, if the pool's spawn waits).
        All the tasks run to the end; then the first exception, in input order, is
        raised.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        wait = self._config.spawn_waits_when_full
        tasks = [self._spawn(fn, xs, {}, wait, False) for xs in zip(*iterables, strict=False)]
        for task in tasks:
            task.join()
        return [task.get() for task in tasks]

    def map_cb(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        callback: Callable[[list[T]], object] | None = None,
    ) -> list[T]:
        """`map`, then ``callback(results)`` in the caller, if given."""
        _check_callback(callback)
        result = self.map(fn, iterable)
        if callback is not None:
            callback(result)
        return result

    def map_async(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        callback: Callable[[list[T]], object] | None = None,
    ) -> Task[list[T]]:
        """`map_cb` in a task of the default pool (not of this one, whose workers it
        waits for); return that task at once."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        _check_callback(callback)
        return _default_pool().spawn(self.map_cb, fn, iterable, callback)

    def imap(
        self, fn: Callable[..., T], *iterables: Iterable[Any], maxsize: int | None = None
    ) -> IMap[T]:
        """Yield ``fn(*xs)`` for each ``xs`` in ``zip(*iterables)``, in input order, as the
        results come in.

        It streams: the input is read, and tasks are spawned, by a greenlet of its own
        while the caller reads results, with at most ``cap`` of its tasks queued or
        running; with ``maxsize``, at most that many results wait unread before it stops
        spawning. A task's exception is raised when its result is reached, and the
        iteration goes on after it; an exception from the input is raised after the
        results of the items before it.
        """
        return IMap(self, fn, iterables, maxsize, ordered=True)

    def imap_unordered(
        self, fn: Callable[..., T], *iterables: Iterable[Any], maxsize: int | None = None
    ) -> IMap[T]:
        """Like `imap`, but each result is yielded as soon as its task finishes."""
        return IMap(self, fn, iterables, maxsize, ordered=False)

    # -- stopping ----------------------------------------------------------------------

    def killone(
        self,
        task: Any,
        exception: Any = GreenletExit,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Kill ``task`` if it is a member (with ``exception``, as ``Task.kill`` does);
        with ``block``, wait up to ``timeout`` seconds for it to finish."""
        timeout = check_timeout(timeout)
        check_exception(exception)
        membership = self._membership_or_none
        if membership is None or task not in membership.tasks or task in membership.dying:
            return  # not a member, or killed already: gevent's killone fires once
        if (
            isinstance(task, _Task)
            and task._pool is self
            and getattr(task._greenlet, "state", None) is LEAVING
        ):
            return  # this pool's kill hit it already (another pool's is not this one's)
        membership.dying.add(task)
        task.kill(exception, block=False)
        if block:
            task.join(timeout)

    def _dying_workers(self) -> set[Any]:
        """For `Pool.kill`: the workers running this pool's tasks that `killone` killed
        (they are not hit again)."""
        membership = self._membership_or_none
        if membership is None or not membership.dying:
            return set()
        return {
            task._greenlet
            for task in membership.dying
            if isinstance(task, _Task) and task._greenlet is not None
        }

    def _added_members(self) -> list[Any]:
        """The members `add` gave this pool that are not its own tasks."""
        # And its own tasks not started yet, or waiting for their time (start_later): on
        # no queue, so Pool.kill and join must see them among the added ones.
        return [
            member
            for member in self._members
            if not (
                isinstance(member, _Task)
                and member._pool is self
                and member._state is not _UNSTARTED
                and member._state is not _LATER
            )
        ]

    def _join_added_members(self, timeout: float | None) -> bool:
        """For `Pool.join`: wait up to ``timeout`` seconds for the added members (a raw
        greenlet, which cannot be waited for, stays until discarded); True if none is left."""
        added = self._added_members()
        if added:
            deadline = None if timeout is None else time.monotonic() + timeout
            for member in added:
                join = getattr(member, "join", None)
                if join is not None:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    join(left)
        return not any(getattr(member, "join", None) and not member.dead for member in added)

    def _kill_added_members(self, exception: object) -> list[Any]:
        """For `Pool.kill`: kill the members `add` gave this pool that are not its own
        tasks (greenlets, other pools' tasks), without waiting; return them."""
        added = self._added_members()
        membership = self._membership_or_none
        dying = set() if membership is None else membership.dying
        for member in added:
            if member in dying:
                continue  # killone killed it: not again
            kill = getattr(member, "kill", None)
            if kill is not None:
                kill(exception, block=False)
            else:
                gevent_kill(member, as_exception(exception))  # a raw greenlet
        return added

    def _raise_member_error(self, members: list[Any]) -> None:
        """For ``join(raise_error=True)``: raise the exception of one of ``members`` (a
        snapshot taken when join was called) that failed, as gevent's join does."""
        for member in members:
            exc = getattr(member, "exception", None)
            if isinstance(exc, BaseException):
                raise exc


def _args(
    args: Iterable[Any] | None, kwds: dict[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (() if args is None else tuple(args)), ({} if kwds is None else dict(kwds))


def _check_callback(callback: object) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")


class _PassValue:
    """A task hook that calls ``callback(task.value)`` if the task succeeded."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[Any], object]) -> None:
        self.callback = callback

    def __call__(self, task: Task[Any]) -> None:
        if task.successful():
            _default_pool().go(self.callback, task.value)


def _default_pool() -> Pool:
    from ggopool._default import default_pool  # _default imports _pool, which imports us

    return default_pool()


class _Failure:
    """An exception on its way to the reader of an `IMap`."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = _Failure(StopIteration())

#: A gevent Semaphore's counter is a C int.
_SEMAPHORE_MAX = 2**31 - 1
_MISSING = object()


class IMap(Generic[T]):
    """The iterator `Pool.imap` and `Pool.imap_unordered` return.

    Its greenlet reads the input until the input ends: an endless input is read for as
    long as the results are taken (``maxsize``) or until `kill`.

    ``queue`` holds the results that finished and were not yet read (in ``imap``, those
    read out of order wait apart), as in gevent's ``IMapUnordered``.
    """

    def __init__(
        self,
        pool: GeventPoolMixin,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        maxsize: int | None,
        ordered: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if maxsize is not None:
            check_int_at_least("maxsize", maxsize, 1)
        # zip() calls iter() on each now: a non-iterable raises TypeError in the caller.
        items = zip(*iterables, strict=False)
        self.queue: UnboundQueue[Any] = UnboundQueue()
        self._ordered = ordered
        self._pending: dict[int, Any] = {}  # imap: results that came in before their turn
        self._next_index = 0
        self._unread = None if maxsize is None else Semaphore(maxsize)
        # The reading greenlet keeps at most cap of its tasks queued or running (a cap
        # beyond what a gevent Semaphore counts bounds nothing anyway).
        cap = pool._cap
        self._outstanding = Semaphore(cap) if cap < _SEMAPHORE_MAX else DummySemaphore()
        self._running = 0  # its tasks spawned and not finished
        self._input_done = False
        self._end_index = 0  # imap: the index of the end, once the input is done
        self._finished = False  # the reader has had StopIteration
        self._feeder = spawn_raw(self._feed, pool, fn, items)

    def __iter__(self) -> IMap[T]:
        return self

    def kill(self) -> None:
        """Read no more of the input (gevent's IMap is a greenlet, which ``kill`` ends);
        the tasks already spawned run on, and their results are still yielded."""
        if not self._input_done:
            gevent_kill(self._feeder)

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        if self._unread is not None:
            self._unread.release()
        if self._ordered:
            value = self._pending.pop(self._next_index, _MISSING)
            while value is _MISSING:
                index, value = self.queue.get()
                if index != self._next_index:
                    self._pending[index] = value
                    value = _MISSING
            self._next_index += 1
        else:
            value = self.queue.get()
        if isinstance(value, _Failure):
            if value is _DONE:
                self._finished = True
                raise StopIteration
            raise value.exc
        return value  # type: ignore[no-any-return]

    def _feed(
        self, pool: GeventPoolMixin, fn: Callable[..., T], items: Iterator[tuple[Any, ...]]
    ) -> None:
        # Runs in a greenlet of its own, so that the reader gets results while the input
        # is read (gevent's IMap is a greenlet too).
        index = 0
        unread = self._unread
        outstanding = self._outstanding
        try:
            wait = pool._config.spawn_waits_when_full
            while True:
                # Room first, then the next item: an item read is never dropped (by a
                # kill() while waiting for room, say).
                if unread is not None:
                    unread.acquire()
                outstanding.acquire()
                try:
                    if wait:
                        pool._wait_for_room(True, None)
                    xs = next(items)
                    task = pool._spawn(fn, xs, {}, False, False)
                except BaseException:
                    outstanding.release()
                    if unread is not None:
                        unread.release()
                    raise
                self._running += 1
                task._add_hook(_Collect(self, index))
                index += 1
        except (StopIteration, GreenletExit):
            pass  # the end of the input, or kill(): what was spawned is still yielded
        except BaseException as exc:  # noqa: BLE001 - the reader gets it, after the items before it
            self._put(index, _Failure(exc))
            index += 1
        self._end_index = index
        self._input_done = True
        if self._running == 0:
            self._put(index, _DONE)

    def _put(self, index: int, value: Any) -> None:
        self.queue.put((index, value) if self._ordered else value)

    def _on_result(self, index: int, task: Task[T]) -> None:
        self._running -= 1
        self._outstanding.release()
        if task.successful():
            self._put(index, task.value)
        else:
            exc = task.exception
            assert exc is not None
            self._put(index, _Failure(exc))
        if self._input_done and self._running == 0:
            self._put(self._end_index, _DONE)


class _Collect:
    """The hook that hands one task's outcome to its `IMap`."""

    __slots__ = ("imap", "index")

    def __init__(self, imap: IMap[Any], index: int) -> None:
        self.imap = imap
        self.index = index

    def __call__(self, task: Task[Any]) -> None:
        self.imap._on_result(self.index, task)
