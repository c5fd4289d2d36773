"""KServe V1's :explain for an early-exit network: what every exit said of each image, and where the rules stop it.

The question an early-exit deployment gets is "why did this image stop at layer 15, and what would the deeper layers
have said?". So an explanation runs each image through every exit (the progressive answers of server/jobs.py, as
ModelStreamInfer's `progressive`: no exit computed twice) and gives, exit by exit: the class, its calibrated
probability, the calibrated policy's score and its threshold in force there (after any online adaptation,
server/monitor.py), and whether the policy would stop there. Beside it, the request's own rule (`min_confidence`,
`calibrated_policy`, `max_exit`, as :predict takes them) is replayed on those answers with the engine's own rule
(server/policy.py's stop_reason): `predictions` are what :predict would answer with them, and `rule_stop_exit` says
where. A budget has no place here (an explanation runs every exit): `budget_ms` is refused by name; a server's
--default-budget-ms still applies, and where it stops an image early its explanation ends there, saying so.
It costs the whole network per image, as a final-exit request does.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from server.errors import InvalidInput
from server.jobs import Answer
from server.policy import CONTINUED, stop_reason
from server.requests import ExitControls
from server.v2 import model as v2
from server.v2.tensors import BYTES, Tensor


async def explain(app, engine, tensor: Tensor, controls: ExitControls, arrival: float,
                  deadline: float | None) -> tuple[list[Answer], list[dict]]:
    """(each image's answer under the request's rule, each image's explanation), for the images of `tensor`."""
    if controls.budget_ms is not None:
        raise InvalidInput("parameter 'budget_ms' does not apply to :explain, which runs every exit of each image; "
                           "send it to :predict")
    controls.check(len(engine.info.exits))
    # All of the request's images at once, as :predict asks, before any is decoded: each runs as its own request
    # below, and a refusal half-way would leave the first ones computing for an answer nobody gets.
    engine.check_admission(tensor.shape[0], engine.priority_level(controls.priority))
    full_depth = ExitControls(priority=controls.priority)  # no rule: every exit, the final one last
    runs = await asyncio.gather(*(_every_exit(app, engine, _one(tensor, i), full_depth, arrival, deadline)
                                  for i in range(tensor.shape[0])))
    answers, explanations = [], []
    for trajectory in runs:
        answer, explanation = _explained(engine, trajectory, controls)
        answers.append(answer)
        explanations.append(explanation)
    return answers, explanations


async def _every_exit(app, engine, image: Tensor, controls: ExitControls, arrival: float,
                      deadline: float | None) -> list[Answer]:
    passed: list[Answer] = []
    last = await v2.infer(app, engine, [image], controls, arrival, deadline, progress=passed.append)
    return [*passed, *last]


def _one(tensor: Tensor, i: int) -> Tensor:
    """Image i of a request's tensor, as a tensor of one image."""
    data = [tensor.data[i]] if tensor.datatype == BYTES else tensor.data[i:i + 1]
    return Tensor(tensor.name, tensor.datatype, (1, *tensor.shape[1:]), data)


def _explained(engine, trajectory: list[Answer], controls: ExitControls) -> tuple[Answer, dict]:
    info, last = engine.info, len(engine.info.exits) - 1
    max_exit = last if controls.max_exit is None else controls.max_exit
    exits, answer, policy_stop = [], None, None
    for a in trajectory:
        k, probs = a.exit_index, a.probs
        best = int(np.argmax(probs))
        top1 = float(probs[best])
        score = float(engine.policy_confidence(probs[None], np.array([top1]))[0])
        threshold = engine.policy_threshold(k) if k < last else None
        stops = threshold is None or score >= threshold
        policy_stop = k if policy_stop is None and stops else policy_stop
        exits.append({"exit_index": k, "exit_layer": info.exits[k].layer, "class": info.classes[best],
                      "class_index": best, "probability": top1, "policy_score": score, "policy_threshold": threshold,
                      "policy_stops": stops})
        if answer is None:
            rule = engine.rule_threshold(k, controls.min_confidence, controls.calibrated_policy)
            reason = stop_reason(k, last, max_exit, score if controls.calibrated_policy else top1, rule, 0.0, 0.0, None)
            if reason is not None:
                answer = dataclasses.replace(a, reason=reason)
    ended = trajectory[-1]
    if answer is None:  # the server's default budget ended the run before the rule or the final exit
        answer = ended
    explanation = {"exits": exits, "policy_stop_exit": policy_stop, "rule_stop_exit": answer.exit_index,
                   "computed_to_exit": ended.exit_index,
                   "ended_by": ended.reason if ended.reason != CONTINUED else None}
    return answer, explanation
