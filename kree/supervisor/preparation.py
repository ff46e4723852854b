"""
Preparing a dispatched job for its engine: its inputs staged (fetched, or
answered from the cache) while it is still QUEUED, each step a job message,
then its directory written (kree.jobdir: workflow.xml, parameters.json,
policy.json, inputs/, products/, answers/) in a thread.  A failure raises
the KreeError whose message becomes the job's reason.
"""

from __future__ import annotations

from pathlib import Path

from kree import jobdir
from kree.errors import DatabaseUnavailable, KreeError
from kree.jobs import JobService, WorkflowSource
from kree.records import Job
from kree.store import Store
from kree.supervisor.background import InThread, Patience


class Preparation:
    def __init__(self, store: Store, jobs: JobService, workflows: WorkflowSource, *,
                 in_thread: InThread, patience: Patience) -> None:
        """@param workflows: fetches inputs and keeps fetched workflows (kree.fetch.Fetcher)."""
        self._store = store
        self._jobs = jobs
        self._workflows = workflows
        self._in_thread = in_thread
        self._patience = patience

    async def stage_inputs(self, job: Job) -> dict[str, Path]:
        """
        Fetch the job's inputs (the cache answers for those it has); a
        failure marks the input failed and is raised.
        """
        detail = await self._store.jobs.get_detail(job.id)
        if not detail.inputs:
            return {}
        await self._jobs.add_message(job.id, "staging inputs: " + ", ".join(
            i.name for i in detail.inputs))
        staged = {}
        for item in detail.inputs:
            try:
                result = await self._workflows.fetch(item.uri)
            except DatabaseUnavailable:
                raise  # still QUEUED: staged again later
            except KreeError:
                await self._patience(self._store.jobs.record_staging_failed, job.id, item.name)
                raise
            staged[item.name] = result.path
            await self._store.jobs.record_staged(job.id, item.name, result.sha256, result.size)
            await self._jobs.add_message(
                job.id, f"staged input {item.name} ({result.size} bytes, "
                        f"{'fetched' if result.fetched else 'from the cache'})")
        return staged

    async def write_job_dir(self, job: Job, staged: dict[str, Path]) -> None:
        """The job directory, with the workflow version the job was created with."""
        detail = await self._patience(self._store.jobs.get_detail, job.id)
        policy = await self._patience(self._store.policies.all)
        if job.workflow_sha256 is None:
            raise jobdir.PreparationFailed("the job has no fetched workflow version")
        await self._in_thread(
            jobdir.prepare, Path(job.job_dir),
            workflow=self._workflows.cache_path(job.workflow_sha256),
            parameters=detail.parameters, policy=policy, inputs=staged)
