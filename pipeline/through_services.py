"""`pneumonia experiment --via-services`: the whole experiment driven through the services' APIs.

The same steps as the in-process experiment (pipeline.in_process, both run by pipeline.steps.run_steps), each one a
call to a service:

    dataset      -> object storage (datasets bucket, <dataset>/)
    TrainerService.StartGanJob            runs/<run>/gan            WatchJob until it ends
    GeneratorService.GenerateStream       synthetic images of that generator, one call per class --synthesize
                                          asks for; two classes are merged into runs/<run>/synthetic/
    TrainerService.StartClassifierJob x4  runs/<run>/classifiers    every strategy (+ .mar each), queued together,
                                          followed one after the other; with --repeats R, R x 4 jobs, repeat
                                          r > 0 in repeat-<r>/ below (no .mar)
    AnalyzerService.Analyze               runs/<run>/analysis       the report
    TorchServe                            register the best strategy's .mar, classify a few hold-out images
                                          over REST and gRPC

Each step's typed config (pipeline.plan: the profile, the user's --<step>-args, --seed, --cpu) fills its request
(`config.to_proto`), so a profile means the same thing in-process and through the services. A local option that
no request carries is refused when set, except the data-loader workers and the generator's device, which each
service decides for itself; paths and dataset come from the run's storage layout instead.
Services are found through environment variables (ServiceEndpoints); `--local-services` starts them all first as
local processes (pipeline.local_stack).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
from google.protobuf.message import Message
from pneumonia_proto.v1 import (
    analyzer_pb2,
    analyzer_pb2_grpc,
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tqdm import tqdm

from pipeline.endpoints import ServiceEndpoints
from pipeline.plan import PlannedStep, plan
from pipeline.profiles import STRATEGIES
from pipeline.steps import TIMINGS_FILE, Step, run_steps, timings_json
from pipeline.tracking import (
    SERVED_ALIAS,
    Registered,
    TrackedRun,
    browse_hint,
    log_experiment,
    store_registered_archive,
)
from services.classifier.client import ClassifierClient, ClassifierError, register_from_store
from shared import layout
from shared.auth import authenticated_channel
from shared.configs import ClassifierTrainingConfig, GenerationConfig, StepConfig
from shared.datasets import CLASS_NAMES, NORMAL, PNEUMONIA, load_dataset
from shared.errors import ConfigError, PneumoniaError
from shared.splits import develop_and_holdout
from shared.storage import ObjectRef, ObjectStore, open_store
from shared.storage.config import BucketNames
from shared.storage.proto import ref_from_proto
from shared.storage.sync import download_prefix, upload_dir
from shared.synthetic import merge_synthetic_folders

log = logging.getLogger(__name__)

# Local options a service decides for itself: accepted (the quick profile sets the workers), never sent.
SERVICE_DECIDES = frozenset({"workers", "cpu"})
PROGRESS_METRICS = ("loss_d", "loss_g", "train_loss", "val_loss", "val_auroc", "val_acc")  # shown when a job has them
MODEL_NAME = "pneumonia"
NUM_SAMPLE_PREDICTIONS = 4


def request(config: StepConfig, message: Message) -> Message:
    """`message` with the config's request fields; ConfigError for a local option set that no request carries."""
    cls = type(config)
    refused = [
        cls.flag(name)
        for name in cls.fields_of("local")
        if name not in SERVICE_DECIDES and getattr(config, name) != cls.model_fields[name].default
    ]
    if refused:
        raise ConfigError(f"{', '.join(refused)} cannot be sent to the service ({message.DESCRIPTOR.full_name})")
    return config.to_proto(message)


class JobFailedError(PneumoniaError):
    """A trainer job ended in FAILED or CANCELLED."""


# How long the orchestrator keeps trying to re-attach to a job while the trainer is down (a restart, a rolling update):
# the trainer requeues the job when it comes back and it resumes from its last checkpoint.
REATTACH_WITHIN_S = 600.0
# Deadlines of the orchestrator's calls: a call that only queues or looks something up gets CALL_DEADLINE_S; one
# WatchJob stream lasts at most WATCH_DEADLINE_S, then the orchestrator watches again (a new stream); the calls that
# do their work while the orchestrator waits get the longest a full-profile step may take.
CALL_DEADLINE_S = 60.0
WATCH_DEADLINE_S = 1800.0
GENERATE_DEADLINE_S = 3 * 3600.0
ANALYZE_DEADLINE_S = 6 * 3600.0
# A Start* call that fails with one of these is sent again with the same idempotency key (the same job, never two).
START_ATTEMPTS = 5
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
TERMINAL_STATES = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)


def start_job(start: Callable[..., trainer_pb2.Job], job_request: Message, key: str) -> trainer_pb2.Job:
    """`start(job_request)` (StartGanJob or StartClassifierJob) with idempotency key `key` and a deadline, sent again
    while the trainer is unreachable or slow to answer (up to START_ATTEMPTS times): the key makes every attempt
    name the same job."""
    job_request.idempotency_key = key
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start(job_request, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or attempt == START_ATTEMPTS:
                raise
            log.warning("starting %s: %s; trying again (%d/%d)", key, exc.code().name, attempt, START_ATTEMPTS)
            time.sleep(2.0**attempt)
    raise AssertionError("unreachable")


def watch_job(
    stub: trainer_pb2_grpc.TrainerServiceStub,
    started: trainer_pb2.Job,
    title: str,
    reattach_within_s: float = REATTACH_WITHIN_S,
    watch_deadline_s: float = WATCH_DEADLINE_S,
) -> trainer_pb2.Job:
    """Follow a job's WatchJob stream with a progress bar (epochs over all folds) until it ends; return it. A stream
    ends at its deadline (`watch_deadline_s`) and is opened again. When it breaks because the trainer went away
    (UNAVAILABLE, or its shutdown ended the stream), watch again, for up to `reattach_within_s` seconds without an
    answer."""
    job = started
    total = max(job.total_epochs, 1) * max(job.total_folds, 1)
    with tqdm(total=total, desc=title, unit="epoch", leave=True) as bar:
        down_since: float | None = None
        while job.state not in TERMINAL_STATES:
            try:
                watch = trainer_pb2.WatchJobRequest(job_id=started.job_id)
                for update in stub.WatchJob(watch, timeout=watch_deadline_s):
                    job, down_since = update, None
                    total = max(job.total_epochs, 1) * max(job.total_folds, 1)
                    done = max(job.fold - 1, 0) * job.total_epochs + job.epoch
                    bar.total = total
                    bar.n = min(done, total)
                    shown = [name for name in PROGRESS_METRICS if name in job.metrics]
                    bar.set_postfix({name: f"{job.metrics[name]:.3f}" for name in shown}, refresh=False)
                    bar.refresh()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # the stream's own deadline: watch again
                    continue
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            if job.state in TERMINAL_STATES:
                break
            if down_since is None:
                down_since = time.monotonic()
                log.warning("%s: the trainer went away; watching job %s again when it is back", title, job.job_id)
            elif time.monotonic() - down_since > reattach_within_s:
                raise JobFailedError(
                    f"{title}: lost trainer job {job.job_id}: no answer from the trainer for {reattach_within_s:.0f} s"
                )
            time.sleep(1.0)
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        state = common_pb2.JobState.Name(job.state)
        raise JobFailedError(f"{title}: trainer job {job.job_id} ended {state}: {job.message}")
    return job


def output_ending(job: trainer_pb2.Job, suffix: str) -> common_pb2.ObjectRef:
    """The job output whose key ends with `suffix`."""
    for ref in job.outputs:
        if ref.key.endswith(suffix):
            return ref
    raise JobFailedError(f"trainer job {job.job_id} stored no output ending in {suffix!r}")


def generate(
    stub: generator_pb2_grpc.GeneratorServiceStub, request: generator_pb2.GenerateRequest
) -> generator_pb2.GenerateResponse:
    """GenerateStream with a progress bar; the last message's result."""
    with tqdm(total=request.count, desc="generate-synthetic", unit="img") as bar:
        for progress in stub.GenerateStream(request, timeout=GENERATE_DEADLINE_S):
            if progress.phase == generator_pb2.GENERATE_PHASE_DONE:
                return progress.result
            phase = generator_pb2.GeneratePhase.Name(progress.phase).removeprefix("GENERATE_PHASE_").lower()
            bar.set_description(f"generate-synthetic ({phase})")
            bar.n = progress.images_done
            bar.refresh()
    raise PneumoniaError("the generator's stream ended without a result")


@dataclass
class Run:
    """One experiment through the services: its id, storage layout and clients."""

    args: argparse.Namespace
    store: ObjectStore
    buckets: BucketNames
    endpoints: ServiceEndpoints
    run_id: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}"


def channel(address: str, token: str | None) -> grpc.Channel:
    """A channel to one of our services whose calls carry the orchestrator's bearer token."""
    return authenticated_channel(address, token, options=[("grpc.max_receive_message_length", 64 << 20)])


def upload_dataset(run: Run) -> common_pb2.DatasetSource:
    """Put the local dataset into the datasets bucket under <dataset>/ (files already stored unchanged are skipped)."""
    data_dir = Path(run.args.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a directory")
    prefix = f"{run.args.dataset}/"
    refs = upload_dir(run.store, data_dir, run.buckets.datasets, prefix)
    log.info("dataset %s: %d files in s3://%s/%s", run.args.dataset, len(refs), run.buckets.datasets, prefix)
    return common_pb2.DatasetSource(
        name=run.args.dataset, data=common_pb2.ObjectPrefix(bucket=run.buckets.datasets, prefix=prefix)
    )


def train_gan(
    run: Run, trainer: trainer_pb2_grpc.TrainerServiceStub, dataset: common_pb2.DatasetSource, config: StepConfig
) -> common_pb2.ObjectRef:
    gan = request(config, trainer_pb2.StartGanJobRequest(dataset=dataset, output_prefix=f"{run.prefix}/gan"))
    job = watch_job(trainer, start_job(trainer.StartGanJob, gan, f"{run.run_id}/train-gan"), "train-gan")
    return output_ending(job, f"/{layout.GENERATOR_FINAL}")


def generate_synthetic(
    run: Run,
    generator: generator_pb2_grpc.GeneratorServiceStub,
    checkpoint: common_pb2.ObjectRef,
    config: GenerationConfig,
) -> generator_pb2.GenerateResponse:
    generate_request = request(config, generator_pb2.GenerateRequest(checkpoint=checkpoint, output_prefix=run.prefix))
    if config.label is None:  # the service needs a label: the unconditional GAN's own, pneumonia (--train-on positive)
        generate_request.label = common_pb2.LABEL_PNEUMONIA
    result = generate(generator, generate_request)
    log.info(
        "%d synthetic images (%d objects) in s3://%s/%s",
        generate_request.count,
        len(result.images),
        result.manifest.bucket,
        result.prefix,
    )
    return result


def synthetic_location(run: Run, results: Sequence[generator_pb2.GenerateResponse]) -> common_pb2.ObjectPrefix:
    """Where the experiment's synthetic images are: one generator result's prefix, or the results of several
    classes merged into runs/<run>/synthetic/ (one folder, one manifest.csv), as the in-process steps write them."""
    bucket = results[0].manifest.bucket
    if len(results) == 1:
        return common_pb2.ObjectPrefix(bucket=bucket, prefix=results[0].prefix)
    merged = f"{run.prefix}/synthetic/"
    with tempfile.TemporaryDirectory(prefix="pneumonia-synthetic-") as tmp:
        folders = []
        for index, result in enumerate(results):
            folder = Path(tmp, str(index))
            download_prefix(run.store, result.manifest.bucket, result.prefix, folder)
            folders.append(folder)
        merge_synthetic_folders(folders, Path(tmp, "merged"))
        upload_dir(run.store, Path(tmp, "merged"), bucket, merged)
    log.info("merged %d generator results into s3://%s/%s", len(results), bucket, merged)
    return common_pb2.ObjectPrefix(bucket=bucket, prefix=merged)


def start_classifiers(
    run: Run,
    trainer: trainer_pb2_grpc.TrainerServiceStub,
    dataset: common_pb2.DatasetSource,
    synthetic: common_pb2.ObjectPrefix,
    configs: dict[str, ClassifierTrainingConfig],
) -> dict[str, trainer_pb2.Job]:
    """Queue every strategy's job at once (the trainer runs them one after the other); the started jobs by step."""
    started = {}
    for name, config in configs.items():
        job_request = request(
            config,
            trainer_pb2.StartClassifierJobRequest(
                dataset=dataset,
                synthetic=synthetic,
                output_prefix=f"{run.prefix}/classifiers",  # a repeat r > 0 writes into its repeat-<r>/ below
                # the first repeat's models are the ones served
                model_archive_name=f"{MODEL_NAME}-{config.strategy}" if config.repeat == 0 else "",
            ),
        )
        started[name] = start_job(trainer.StartClassifierJob, job_request, f"{run.run_id}/{name}")
    return started


def analyze(
    run: Run,
    analyzer: analyzer_pb2_grpc.AnalyzerServiceStub,
    dataset: common_pb2.DatasetSource,
    synthetic: common_pb2.ObjectPrefix,
    generator_checkpoint: common_pb2.ObjectRef,
    config: StepConfig,
) -> analyzer_pb2.AnalyzeResponse:
    prefix = run.prefix
    analyze_request = request(
        config,
        analyzer_pb2.AnalyzeRequest(
            metrics=common_pb2.ObjectPrefix(bucket=run.buckets.results, prefix=f"{prefix}/classifiers/metrics/"),
            models=common_pb2.ObjectPrefix(bucket=run.buckets.models, prefix=f"{prefix}/classifiers/"),
            synthetic=synthetic,
            output=common_pb2.ObjectPrefix(bucket=run.buckets.results, prefix=f"{prefix}/analysis/"),
            dataset=dataset,
            generator=generator_checkpoint,
        ),
    )
    log.info("analyzing (one call; the analyzer logs its phases)")
    return analyzer.Analyze(analyze_request, timeout=ANALYZE_DEADLINE_S)


def holdout_samples(
    args: argparse.Namespace, per_class: int = NUM_SAMPLE_PREDICTIONS // 2
) -> list[tuple[str, str, bytes]]:
    """(patient id, true class, PNG bytes) of a seeded few hold-out images of each class: images no model has seen."""
    _, holdout = develop_and_holdout(load_dataset(args.dataset, args.data_dir))
    rng = np.random.default_rng(args.seed)
    samples = []
    for label in (NORMAL, PNEUMONIA):
        for index in rng.permutation(np.flatnonzero(holdout.labels == label))[:per_class]:
            buffer = io.BytesIO()
            holdout.load(int(index)).save(buffer, format="PNG")
            samples.append((str(holdout.patient_ids[index]), CLASS_NAMES[label], buffer.getvalue()))
    return samples


def serve_and_ask(run: Run, archive: ObjectRef) -> str:
    """Register the archive in TorchServe as MODEL_NAME and classify a few hold-out images over REST and gRPC."""
    endpoints = run.endpoints
    if endpoints.classifier_key_file is None:
        raise ConfigError("PNEUMONIA_CLASSIFIER_KEY_FILE is not set: the orchestrator needs TorchServe's key_file.json")
    client = ClassifierClient(
        endpoints.classifier_inference_url,
        endpoints.classifier_management_url,
        endpoints.classifier_grpc,
        key_file=endpoints.classifier_key_file,
    )
    log.info(
        "registering %s as %r: %s", archive.uri, MODEL_NAME, register_from_store(client, run.store, archive, MODEL_NAME)
    )
    rows = [f"{'hold-out image':<16} {'truth':<10} {'REST answer':<32} gRPC answer"]
    versions = set()
    for patient, truth, png in holdout_samples(run.args):
        (rest, rest_version), (grpc_cell, grpc_version) = (
            sample_answer(client.predict, png),
            sample_answer(client.predict_grpc, png),
        )
        versions |= {rest_version, grpc_version} - {None}
        rows.append(f"{patient:<16} {truth:<10} {rest:<32} {grpc_cell}")
    rows.append(f"model_version {', '.join(sorted(versions)) or '(every sample was refused)'}")
    return "\n".join(rows)


def sample_answer(ask: Callable[[str, bytes], dict[str, Any]], png: bytes) -> tuple[str, str | None]:
    """('label (p=...)', model version [= registry version]), or ('refused (reason)', None) when the served model
    turns the image away
    with a 400 (its plausibility gate): an answer to show, not a failure of the experiment."""
    try:
        answer = ask(MODEL_NAME, png)
    except ClassifierError as exc:
        if exc.status != 400:
            raise
        reason = re.search(r"\[(\w+)\]", exc.message)
        return f"refused ({reason.group(1) if reason else 'bad_input'})", None
    version = str(answer["model_version"])
    if answer.get("registered_model"):  # the MLflow registry version the served archive names
        version += f" = {answer['registered_model']}"
    return f"{answer['label']} (p={answer['pneumonia_probability']:.3f})", version


def best_strategy(run: Run, metrics_dir: Path) -> str:
    """The strategy with the highest mean cross-validation AUROC (validation folds only: the hold-out is never
    used to choose)."""
    scores = {}
    for strategy in STRATEGIES:
        summary = json.loads((metrics_dir / layout.cv_summary_name(strategy)).read_text())
        scores[strategy] = summary["average"].get("auroc") or 0.0
    best = max(scores, key=lambda s: scores[s])
    log.info("cross-validation AUROC %s: serving %s", {s: round(v, 4) for s, v in scores.items()}, best)
    return best


def report_location(run: Run, response: analyzer_pb2.AnalyzeResponse) -> str:
    """Where the text report is: a local path for the LocalStore, else its s3:// URI."""
    report = next((ref for ref in response.reports if ref.key.endswith(layout.COMPARISON_REPORT)), response.summary)
    root = getattr(run.store, "root", None)
    return str(Path(root) / report.bucket / report.key) if root is not None else f"s3://{report.bucket}/{report.key}"


class ServicesDriver:
    """Runs each planned step as a call to a service over open channels; outputs in storage under runs/<run>/."""

    def __init__(
        self,
        run: Run,
        planned: Sequence[PlannedStep],
        trainer: trainer_pb2_grpc.TrainerServiceStub,
        generator: generator_pb2_grpc.GeneratorServiceStub,
        analyzer: analyzer_pb2_grpc.AnalyzerServiceStub,
    ) -> None:
        self.run_id = run.run_id
        self.experiment, self.trainer, self.generator, self.analyzer = run, trainer, generator, analyzer
        self.classifiers = {step.name: step.config for step in planned if step.step == "classifier"}
        self.dataset = common_pb2.DatasetSource()
        self.checkpoint = common_pb2.ObjectRef()
        self.generated: list[generator_pb2.GenerateResponse] = []  # one result per synthesized class
        self.synthetic: common_pb2.ObjectPrefix | None = None  # where the classifiers and the analyzer find them
        self.started: dict[str, trainer_pb2.Job] = {}
        self.jobs: dict[str, trainer_pb2.Job] = {}  # by strategy
        self.analysis = analyzer_pb2.AnalyzeResponse()
        self.best, self.answers, self.tracking = "", "", ""
        self.registered: Registered | None = None  # the served strategy's registry version

    def steps_before(self) -> Sequence[Step]:
        return [("upload-dataset", self.upload_dataset)]

    def upload_dataset(self) -> None:
        self.dataset = upload_dataset(self.experiment)

    def run(self, step: PlannedStep) -> None:
        run, config = self.experiment, step.config
        if step.step == "gan":
            self.checkpoint = train_gan(run, self.trainer, self.dataset, config)
        elif step.step == "generate":
            self.generated.append(generate_synthetic(run, self.generator, self.checkpoint, config))
        elif step.step == "classifier":
            # The first strategy's step queues every strategy's job; each step follows its own job to its end.
            if not self.started:
                synthetic = self.synthetic_images()
                self.started = start_classifiers(run, self.trainer, self.dataset, synthetic, self.classifiers)
            job = watch_job(self.trainer, self.started[step.name], step.name)
            if config.repeat == 0:
                self.jobs[config.strategy] = job
        elif step.step == "analyze":
            synthetic = self.synthetic_images()
            self.analysis = analyze(run, self.analyzer, self.dataset, synthetic, self.checkpoint, config)
        else:
            raise PneumoniaError(f"no service runs the step {step.name!r}")

    def synthetic_images(self) -> common_pb2.ObjectPrefix:
        """The synthetic images of every generate step, in one prefix (merged once, on first use)."""
        if self.synthetic is None:
            if not self.generated:
                raise PneumoniaError("no generate step ran before the classifiers")
            self.synthetic = synthetic_location(self.experiment, self.generated)
        return self.synthetic

    def steps_after(self) -> Sequence[Step]:
        return ([] if self.experiment.args.no_tracking else [("track", self.track)]) + [("serve", self.serve)]

    def choose_served(self) -> str:
        """The strategy to serve: the best mean cross-validation AUROC (chosen once)."""
        if not self.best:
            run = self.experiment
            metrics = f"{run.prefix}/classifiers/metrics/"
            download_prefix(run.store, run.buckets.results, metrics, self.metrics_dir())
            self.best = best_strategy(run, self.metrics_dir())
        return self.best

    def track(self) -> None:
        """Log the run to MLflow from what the services stored; register each strategy's model, the one about to be
        served under the alias "served"."""
        run = self.experiment
        synthetic = self.synthetic_images()
        tracked = TrackedRun(
            run_id=run.run_id,
            params={"profile": run.args.profile, "dataset": run.args.dataset, "repeats": run.args.repeats},
            results=(run.buckets.results, f"{run.prefix}/"),
            archives={
                strategy: ref_from_proto(job.model_archive)
                for strategy, job in self.jobs.items()
                if job.model_archive.key
            },
            lineage={
                "dataset": f"s3://{self.dataset.data.bucket}/{self.dataset.data.prefix}",
                "gan_checkpoint": f"s3://{self.checkpoint.bucket}/{self.checkpoint.key}#sha256={self.checkpoint.sha256}",
                "synthetic": f"s3://{synthetic.bucket}/{synthetic.prefix}",
            },
            served=self.choose_served(),
        )
        logged = log_experiment(run.store, tracked, Path(run.args.work_dir))
        self.tracking, self.registered = logged.uri, logged.versions.get(self.best)

    def serve(self) -> None:
        """Serve the strategy with the best cross-validation AUROC -- its registry version, when tracked -- and ask
        it about a few hold-out images."""
        run = self.experiment
        archive = ref_from_proto(self.jobs[self.choose_served()].model_archive)
        if self.registered is not None:
            archive = store_registered_archive(run.store, archive, self.registered)
        self.answers = serve_and_ask(run, archive)

    def save_timings(self, timings: dict[str, float]) -> None:
        run = self.experiment
        run.store.put_bytes(run.buckets.results, f"{run.prefix}/{TIMINGS_FILE}", timings_json(timings))

    def metrics_dir(self) -> Path:
        return Path(self.experiment.args.work_dir) / "results" / self.run_id / "metrics"

    def notes(self) -> list[str]:
        registry = f", registry version {self.registered.uri}" if self.registered else ""
        lines = [
            f"\nServed by TorchServe as {MODEL_NAME!r}: the {self.best} model (best cross-validation AUROC{registry}).",
            self.answers,
        ]
        if self.analysis.skipped:
            lines.append("Skipped in the analysis: " + "; ".join(self.analysis.skipped))
        if self.tracking:
            lines.append(
                f"MLflow: run {self.run_id} and models pneumonia-<strategy> (alias {SERVED_ALIAS!r} on the served "
                f"one) in {self.tracking}; {browse_hint(self.tracking)}"
            )
        return lines

    def report(self) -> str:
        return report_location(self.experiment, self.analysis)


def run_through_services(args: argparse.Namespace, endpoints: ServiceEndpoints) -> int:
    """The whole experiment through the services; prints the hold-out table, served answers and the report."""
    planned = plan(args)  # a flag the steps do not accept fails here, before anything is stored
    run = Run(
        args=args,
        store=open_store(),
        buckets=BucketNames.from_env(),
        endpoints=endpoints,
        run_id=args.run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{args.profile}",
    )
    for bucket in (run.buckets.datasets, run.buckets.synthetic, run.buckets.models, run.buckets.results):
        run.store.ensure_bucket(bucket)
    with (
        channel(endpoints.trainer, endpoints.token) as trainer,
        channel(endpoints.generator, endpoints.token) as generator,
        channel(endpoints.analyzer, endpoints.token) as analyzer,
    ):
        driver = ServicesDriver(
            run,
            planned,
            trainer_pb2_grpc.TrainerServiceStub(trainer),
            generator_pb2_grpc.GeneratorServiceStub(generator),
            analyzer_pb2_grpc.AnalyzerServiceStub(analyzer),
        )
        if endpoints.token is None:
            log.warning("PNEUMONIA_AUTH_TOKEN is not set: calls carry no token; services that require one refuse them")
        try:
            return run_steps(driver, planned)
        except grpc.RpcError as exc:
            raise ServiceCallError.of(exc) from exc


class ServiceCallError(PneumoniaError):
    """A service refused or failed a call of the orchestrator; the message is the status, its details and a hint."""

    HINTS: ClassVar[dict[grpc.StatusCode, str]] = {
        grpc.StatusCode.UNAUTHENTICATED: "set PNEUMONIA_AUTH_TOKEN to a token the services accept (README, Security)",
        grpc.StatusCode.UNAVAILABLE: "is the service running, and do PNEUMONIA_*_ADDRESS point at it?",
        grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; its log says what it was doing",
    }

    @classmethod
    def of(cls, exc: grpc.RpcError) -> ServiceCallError:
        code = exc.code()
        hint = cls.HINTS.get(code)
        return cls(f"a service call failed: {code.name}: {exc.details()}" + (f" ({hint})" if hint else ""))
