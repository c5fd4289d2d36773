"""The agreement monitor's part of the engine (issue 13): sampled early answers carried on to the final exit
in idle time, their agreement recorded, alarms and adaptation exported. A mixin of ModelEngine, which owns
the queues, the executor and the metrics; the statistics themselves are in server/monitor.py."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from server.monitor import ExitMonitor

log = logging.getLogger("auxnet.server")


@dataclass
class ShadowJob:
    """An early answer being carried on to the final exit for the monitor; never a request."""

    x: np.ndarray  # input of `segment`
    segment: int
    exit_index: int  # where the request was answered
    label: int  # what it was answered
    confidence: float


class AgreementSampling:
    """Needs from its host: info, cfg, metrics, executor, backends, queues, last, monitors, shadow,
    _shadow_wakeup, _quiet."""

    def _sample(self, job: ShadowJob) -> None:
        if len(self.shadow) >= self.cfg.monitor_queue:
            self.metrics.monitor_skipped.labels(self.info.name).inc()
            return
        self.shadow.append(job)
        self._shadow_wakeup.set()

    async def _shadow_worker(self) -> None:
        """Carry sampled early answers on to the final exit, one segment (batched) at a time, and only while
        no exit has a real request queued or running. A request arriving meanwhile finds at most one shadow
        segment run on the segment threads; shadow work is never counted in request, exit or batch metrics."""
        loop = asyncio.get_running_loop()
        while True:
            await self._shadow_wakeup.wait()
            self._shadow_wakeup.clear()
            while self.shadow:
                await self._quiet.wait()
                if not all(not q.heap and not q.busy for q in self.queues):
                    self._quiet.clear()
                    continue
                seg = self.shadow[0].segment
                batch = [j for j in self.shadow if j.segment == seg][: self.cfg.max_batch]
                taken = {id(j) for j in batch}
                self.shadow = [j for j in self.shadow if id(j) not in taken]
                try:
                    outputs = await loop.run_in_executor(self.executor, self.backends[seg].run,
                                                         np.stack([j.x for j in batch]))
                except Exception as e:  # noqa: BLE001 - the monitor must never hurt serving
                    log.warning("agreement monitor: exit %d failed on %d samples (%s: %s); dropped", seg, len(batch),
                                type(e).__name__, e)
                    continue
                for i, j in enumerate(batch):
                    if seg == self.last:
                        self._observe_agreement(j, int(outputs[-1][i].argmax()))
                    else:
                        j.x, j.segment = outputs[0][i], seg + 1
                        self.shadow.append(j)

    def _observe_agreement(self, job: ShadowJob, final_label: int) -> None:
        k, name, m = job.exit_index, self.info.name, self.monitors[job.exit_index]
        agreed = job.label == final_label
        p = m.expected_agreement(job.confidence)
        event = m.record(agreed, job.confidence)
        self.metrics.monitor_samples.labels(name, str(k)).inc()
        self.metrics.monitor_agreements.labels(name, str(k)).inc(int(agreed))
        self.metrics.monitor_expected.labels(name, str(k)).inc(p)
        self.metrics.monitor_cusum.labels(name, str(k)).set(m.cusum)
        self.metrics.monitor_alarm.labels(name, str(k)).set(int(m.alarm))
        if event == "alarm":
            self.metrics.monitor_alarms.labels(name, str(k)).inc()
            log.warning("agreement alarm: model %s exit %d (layer %d): early answers agreed with the final exit in "
                        "%d of %d monitored samples where calibration predicted %.1f (CUSUM %.2f >= %.2f)", name, k,
                        self.info.exits[k].layer, m.agreed, m.samples, m.expected, m.cusum, m.threshold)
        elif event == "clear":
            log.info("agreement alarm cleared: model %s exit %d after %d samples", name, k, m.samples)
        if self.cfg.monitor_adapt and (step := m.adapt(self.cfg.monitor_adapt_every)):
            self.metrics.threshold_changes.labels(name, str(k), step).inc()
            self._export_threshold(k, m)
            log.warning("adaptation: model %s exit %d thresholds %s: policy threshold now %.4f (scale %.4g)", name, k,
                        "raised" if step == "raise" else "lowered", m.effective_threshold(self.info.exits[k].threshold),
                        m.scale)

    def _export_threshold(self, k: int, m: ExitMonitor) -> None:
        self.metrics.threshold_scale.labels(self.info.name, str(k)).set(m.scale)
        self.metrics.policy_threshold.labels(self.info.name, str(k)).set(m.effective_threshold(self.info.exits[k].threshold))
