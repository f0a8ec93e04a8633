"""Durable storage of clinicians' feedback on cards, and of the cards the service issues.

The modules: :mod:`.store` (the Store: feedback, issued cards, replay checks), :mod:`.schema` (the tables),
:mod:`.records` (the values stored and reported), :mod:`.database` (URL, engine, migrations' configuration, bounded
calls, health, readiness), :mod:`.replays` (the in-memory replay store), :mod:`.report` (the feedback report),
:mod:`.recorder` and :mod:`.spool` (issued-card records off the hot path). May import ``core`` and the shared leaves;
not ``web``, ``fhir``, ``kit`` or ``evidence``.

One relational database holds both (SQLite by default, PostgreSQL in production). Its schema belongs to the Alembic
migrations in ``cds_service/store/migrations``; :meth:`store.Store.migrate` applies them, and nothing here creates
tables any other way. Later tables (a ``seen_jtis`` replay store shared by all workers, say) arrive as further
revisions and reuse :meth:`store.Store.insert_ignoring_conflicts` and :attr:`store.Store.writer`.

- **Feedback** is written synchronously, in one transaction committed before :meth:`Store.record_feedback`
  returns. Identical repeats are stored once: each row carries a SHA-256 of its content under a unique constraint,
  inserted with the dialect's ``INSERT … ON CONFLICT DO NOTHING``.
- **Issued cards** are only a record, kept off the hot path: :class:`CardRecorder` queues them (bounded, never
  blocking) and a background thread writes them in batches; the service uses its subclass
  :class:`cds_service.store.spool.SpoolingCardRecorder`, which keeps them in a durable local spool until they are
  written.
  Only what links feedback to a card is kept (uuid, service, outcome, tier, the ids of the present predictors, the
  suggestions offered with the predictor each one orders, the knowledge base, the time): no patient identifier, no
  value.

**Faults** (``[database]`` settings, docs/deployment.md "Database faults"): the engine carries connect, statement and
pool timeouts; the database calls of requests (feedback, the JWT replay check, readiness) run in a few bounded
threads and are abandoned after :attr:`Store.deadline`, so a hung database holds no request thread. While the
database is unavailable (:class:`DatabaseHealth`) requests do not wait on it: feedback raises
:class:`DatabaseUnavailable` (503), the replay check answers from :class:`MemoryReplays`.

Nothing here logs request content: log lines carry counts, service ids and exception class names only.

Fork safety (gunicorn): a :class:`Store` forgets its pooled connections, threads and outage state in a forked child,
and a :class:`CardRecorder` starts its writer thread lazily, in the process that submits, with a fresh queue after a
fork.
"""
