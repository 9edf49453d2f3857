"""TorchServe's HTTP APIs on inferd's port: ``/ping``, ``/predictions``, and management ``/models``.

Reading the management API (list, describe) is always on; changing it (register, scale,
set-default, unregister) needs ``--model-control explicit``, as loading over the v2 API does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import orjson

from inferd.core import Core
from inferd.core.torchserve import Outcome, RegisterRequest
from inferd.core.torchserve_workflows import NodeInput, Original, WorkflowFailed, run_workflow
from inferd.errors import (
    TOKEN_REFUSED,
    AlreadyExists,
    Forbidden,
    InferdError,
    InvalidInput,
    ModelError,
    NotFound,
    Unauthenticated,
)
from inferd.observability.torchserve_metrics import TorchServeMetrics
from inferd.protocols import torchserve
from inferd.transport.http.app import Guard, Handler, HttpApp, HttpRequest, HttpResponse, Router, json_response
from inferd.transport.http.routes import control_guard, inference_guard, server_timing
from inferd.transport.offload import off_loop
from inferd.types import InferRequest, InferResponse, ModelMetadata, ModelState, VersionDescription

log = logging.getLogger("inferd.torchserve")

_TYPES = {400: "BadRequestException", 401: "Unauthorized", 403: "ForbiddenException",
          404: "ModelNotFoundException", 405: "MethodNotAllowedException", 409: "ConflictStatusException",
          413: "RequestEntityTooLarge", 500: "InternalServerException", 503: "ServiceUnavailableException",
          504: "RequestTimeout"}
_ANY_METHOD = ("GET", "POST", "PUT", "DELETE", "PATCH")  # TorchServe checks none on /ping, /predictions
URL_PATH_DEPTH = 8  # /predictions/{m}/{v}/a/b/...: segments after the version reach the handler as url_path
_SEE_DOCS = "please refer to API document."


def torchserve_error(status: int, message: str) -> HttpResponse:
    """TorchServe's error shape: ``{"code": 404, "type": "ModelNotFoundException", "message": ...}``."""
    if message == TOKEN_REFUSED:  # TorchServe's InvalidKeyException is a 400
        return _error(400, "InvalidKeyException", message)
    kind = _TYPES.get(status, "ServerException")
    if message.startswith("Model version: "):
        kind = "ModelVersionNotFoundException"
    elif message.startswith("Cannot remove default version"):
        kind = "InvalidModelVersionException"
    return _error(status, kind, message)


def torchserve_refusal(status: int, message: str) -> HttpResponse:
    """An unknown path (404) or a wrong method (405): TorchServe's words, not inferd's."""
    if status == 405:
        return _error(405, "MethodNotAllowedException", f"Requested method is not allowed, {_SEE_DOCS}")
    return _error(404, "ResourceNotFoundException", f"Requested resource is not found, {_SEE_DOCS}")


def _error(status: int, kind: str, message: str) -> HttpResponse:
    return HttpResponse(status, orjson.dumps({"code": status, "type": kind, "message": message}))


def prediction_failed(exc: ModelError) -> HttpResponse:
    """A model that raised: TorchServe's status for it (``torchserve.failure_status``) with inferd's
    message, which names the model and what it raised."""
    return _error(torchserve.failure_status(exc), "InternalServerException", exc.message)


class TorchServeRoutes:
    def __init__(self, core: Core, metrics: TorchServeMetrics | None = None) -> None:
        self.core = core
        self.data = core.data
        self.control = core.control
        self.metrics = metrics
        self.keys = torchserve.SequenceHeaders(*core.control.torchserve_sequence_headers)

    def register(self, router: Router, apis: tuple[str, ...] = ("inference", "management"),
                 kserve_predict: bool = False) -> None:
        """TorchServe's routes for ``apis``; ``kserve_predict``: KServe's ``/v1/models/{m}:predict``
        and ``/v2/models/{m}/infer`` too, as predictions (TorchServe's inference address; on
        ``inferd serve``'s port those paths are TF Serving's and KServe v2's own)."""
        def add(method: str, pattern: str, handler: Handler, guard: Guard | None = None) -> None:
            router.add(method, pattern, handler, torchserve_error, guard)

        infer = self._door("inference", inference_guard(self.core))
        control, read = self._door("management", control_guard(self.core)), self._door("management")
        if "inference" in apis:
            router.refuse_under("/ping", torchserve_refusal)
            router.refuse_under("/predictions", torchserve_refusal)
            for method in _ANY_METHOD:
                add(method, "/ping", self.ping, self._door("inference"))  # TorchServe's token check: ping too
                add(method, "/predictions/{model}", self.predict, infer)
                add(method, "/predictions/{model}/{version}", self.predict, infer)
                for depth in range(1, URL_PATH_DEPTH + 1):
                    rest = "/".join(f"{{p{i}}}" for i in range(depth))
                    add(method, f"/predictions/{{model}}/{{version}}/{rest}", self.predict, infer)
                    add(method, f"/explanations/{{model}}/{{version}}/{rest}", self.explain, infer)
            router.refuse_under("/explanations", torchserve_refusal)
            for method in _ANY_METHOD:  # TorchServe's InferenceRequestHandler: KServe's explain too
                add(method, "/explanations/{model}", self.explain, infer)
                add(method, "/explanations/{model}/{version}", self.explain, infer)
                add(method, "/v1/models/{model}:explain", self.explain, infer)
                add(method, "/v2/models/{model}/explain", self.explain, infer)
                if kserve_predict:
                    add(method, "/v1/models/{model}:predict", self.kserve_predict, infer)
                    add(method, "/v2/models/{model}/infer", self.kserve_predict, infer)
            router.refuse_under("/wfpredict", torchserve_refusal)
            for method in _ANY_METHOD:
                add(method, "/wfpredict/{workflow}", self.workflow_predict, infer)
        if "metrics" in apis and self.metrics is not None:
            add("GET", "/metrics", self.render_metrics)
        if "management" not in apis:
            return
        for method in _ANY_METHOD:  # TorchServe's token API (with the API key)
            add(method, "/token", self.renew_key)
        router.refuse_under("/models", torchserve_refusal)
        add("GET", "/models", self.list_models, read)
        add("POST", "/models", self.register_model, control)
        add("GET", "/models/{model}", self.describe, read)
        add("GET", "/models/{model}/{version}", self.describe, read)
        add("PUT", "/models/{model}", self.scale, control)
        add("PUT", "/models/{model}/{version}", self.scale, control)
        add("PUT", "/models/{model}/{version}/set-default", self.set_default, control)
        add("DELETE", "/models/{model}", self.unregister, control)
        add("DELETE", "/models/{model}/{version}", self.unregister, control)
        router.refuse_under("/workflows", torchserve_refusal)
        add("GET", "/workflows", self.list_workflows, read)
        add("POST", "/workflows", self.register_workflow, control)
        add("GET", "/workflows/{workflow}", self.describe_workflow, read)
        add("DELETE", "/workflows/{workflow}", self.unregister_workflow, control)

    def _door(self, kind: str, then: Guard | None = None) -> Guard:
        """TorchServe's token check for its ``kind`` API ("inference" or "management"), then ``then``."""
        def guard(request: HttpRequest) -> None:
            self.control.authorize_door(_credentials(request), kind)
            if then is not None:
                then(request)

        return guard

    async def renew_key(self, request: HttpRequest) -> HttpResponse:
        """``/token?type=management|inference``: a new key in key_file.json; TorchServe answers an empty body."""
        if not self.control.token_authorization:
            return torchserve_refusal(404, "")
        self.control.renew_key(_credentials(request), _query(request).get("type", ""))
        return HttpResponse(200, b"")

    # -- inference API -----------------------------------------------------------------------
    async def ping(self, request: HttpRequest) -> HttpResponse:
        if self.data.ready():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 500)  # TorchServe's InferenceRequestHandler

    async def predict(self, request: HttpRequest) -> HttpResponse:
        return await self._serve(request, explain=False, url_path=_url_path(request))

    async def kserve_predict(self, request: HttpRequest) -> HttpResponse:
        """KServe's ``/v1/models/{m}:predict`` and ``/v2/models/{m}/infer`` on TorchServe's
        inference address: the default version, the body to the handler as on ``/predictions``
        (TorchServe's InferenceRequestHandler; a ``service_envelope`` unwraps it)."""
        return await self._serve(request, explain=False)

    async def explain(self, request: HttpRequest) -> HttpResponse:
        """``/explanations/{m}[/{v}]``, KServe's ``/v1/models/{m}:explain`` and
        ``/v2/models/{m}/explain``: the raw body goes to the handler as a prediction's does, with
        the ``explain: True`` header, so its ``explain_handle`` answers (TorchServe's)."""
        on_explanations = request.path.lstrip("/").startswith("explanations/")
        return await self._serve(request, explain=True, url_path=_url_path(request) if on_explanations else None)

    async def _serve(self, request: HttpRequest, explain: bool, url_path: str | None = None) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        try:
            metadata = self.data.model_metadata(name, version, _credentials(request))
        except NotFound:
            return self._not_found(request, name, version, "Model version: {v} does not exist for model: {m}")
        if explain and not torchserve.is_handler_model(metadata):
            raise InvalidInput(f"model '{name}' has no TorchServe handler: only a handler's explain_handle "
                               "explains; predict over /predictions/{model}")
        try:
            return await self._predict(request, metadata, name, version, explain, url_path)
        except ModelError as exc:
            log.error("%s %s: %s", request.method, request.path, exc.message, exc_info=exc)
            return prediction_failed(exc)

    async def _predict(self, request: HttpRequest, metadata: ModelMetadata, name: str,
                       version: str | None, explain: bool = False, url_path: str | None = None) -> HttpResponse:
        if torchserve.is_handler_model(metadata):
            content_type = request.headers.get("content-type", "application/octet-stream")
            headers = torchserve.with_explain(request.headers, explain, url_path)
            if metadata.stateful and not torchserve.named_sequence(headers, self.keys):  # TorchServe names one
                headers = {**headers, **torchserve.new_sequence(self.keys)}
            infer_request = torchserve.decode_prediction(request.body, content_type, name, version, headers,
                                                         self.keys)
        else:
            infer_request, added_batch = await off_loop(len(request.body), torchserve.decode_tensor_prediction,
                                                        request.body, metadata, version)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = request.headers.get("authorization")
        start = time.perf_counter()
        if torchserve.is_handler_model(metadata):
            return await self._predict_handler(infer_request, start)
        response = await self.data.infer(infer_request)
        self._observe(infer_request, start, response)
        return HttpResponse(200, torchserve.encode_tensor_prediction(response, added_batch),
                            headers=[server_timing(response)])

    async def _predict_handler(self, infer_request: InferRequest, start: float) -> HttpResponse:
        """A handler's answer; one that sends intermediate answers (send_intermediate_predict_response)
        is answered chunked, a chunk per intermediate answer as it is sent, then its last answer, as
        TorchServe's front end does."""
        stream = self.data.infer_stream(infer_request)
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        body, answer_type = torchserve.encode_prediction(first)
        status = torchserve.prediction_status(first)
        headers = torchserve.prediction_headers(first)
        if first.final:
            await stream.aclose()
            self._observe(infer_request, start, first)
            return HttpResponse(status, body, answer_type.encode("latin-1"), [server_timing(first), *headers])
        return HttpResponse(status, body, answer_type.encode("latin-1"), headers,
                            stream=self._chunks(stream, infer_request, start))

    async def _chunks(self, stream: AsyncGenerator[InferResponse, None], infer_request: InferRequest,
                      start: float) -> AsyncGenerator[bytes, None]:
        last: InferResponse | None = None
        async with contextlib.aclosing(stream) as answers:
            try:
                async for answer in answers:
                    last = answer
                    chunk = torchserve.encode_prediction(answer)[0]
                    if chunk:  # an empty chunk would end the answer
                        yield chunk
            except InferdError as exc:  # the status line is sent: the error is the last chunk
                log.warning("model %s failed after intermediate answers: %s", infer_request.model_name, exc.message)
                yield orjson.dumps({"code": 500, "type": type(exc).__name__, "message": exc.message})
        if last is not None:
            self._observe(infer_request, start, last)

    def _not_found(self, request: HttpRequest, name: str, version: str | None, missing_version: str
                   ) -> HttpResponse:
        """TorchServe's 404s: the model (``Model not found: m``), else its version, worded as the
        caller (ModelManager or ModelVersionedRefs) words it."""
        if version is None or name not in {m.name for m in self.control.models(_credentials(request))}:
            return _error(404, "ModelNotFoundException", f"Model not found: {name}")
        return _error(404, "ModelVersionNotFoundException", missing_version.format(v=version, m=name))

    def _observe(self, infer_request: InferRequest, start: float, response: InferResponse) -> None:
        if self.metrics is not None:
            elapsed, timings = time.perf_counter() - start, response.timings
            self.metrics.inference(infer_request.model_name, infer_request.model_version, elapsed, timings.queue,
                                   elapsed - timings.queue - timings.compute)

    def _observe_loads(self, credentials: str | None, since: float) -> None:
        """WorkerLoadTime of each worker that became ready after ``since`` (time.time()), named as
        TorchServe names its workers (W-<port>-<model>_<version>)."""
        if self.metrics is None:
            return
        try:
            rows = [(model.name, row) for model in self.control.models(credentials)
                    for row in self.control.describe(model.name, credentials)]
        except InferdError:  # credentials that may register but not describe: no metric, the answer stands
            return
        for name, row in rows:
            for worker in row.workers:
                if worker.ready and worker.started >= since:
                    self.metrics.worker_loaded(f"W-{9000 + worker.id}-{name}_{row.version}", worker.started - since)

    async def render_metrics(self, request: HttpRequest) -> HttpResponse:
        assert self.metrics is not None
        body = self.metrics.render()
        if self.core.metrics is not None:
            body += self.core.metrics.torchserve_exposition()
        return HttpResponse(200, body, b"text/plain; version=0.0.4; charset=utf-8")

    # -- management API ----------------------------------------------------------------------
    async def list_models(self, request: HttpRequest) -> HttpResponse:
        query = _query(request)
        names = [(m.name, m.source) for m in self.control.models(_credentials(request))]
        return json_response(torchserve.list_page(names, torchserve.java_int(query.get("limit"), 100),
                                                  torchserve.java_int(query.get("next_page_token"), 0)))

    async def describe(self, request: HttpRequest) -> HttpResponse:
        """No version: the default one; ``all``: every version; else that version (TorchServe's)."""
        name, version = request.params["model"], request.params.get("version")
        if name not in {m.name for m in self.control.models(_credentials(request))}:
            raise NotFound(f"Model not found: {name}")
        rows = torchserve.choose_versions(self.control.describe(name, _credentials(request)), name, version,
                                          self.control.default_version(name))
        answer = [torchserve.describe(name, row) for row in rows]
        if version == "all" or not torchserve.java_bool(_query(request).get("customized"), False):
            return json_response(answer)
        return await self._describe_customized(request, name, rows[0], answer)

    async def _describe_customized(self, request: HttpRequest, name: str, row: VersionDescription,
                                   answer: list[dict[str, Any]]) -> HttpResponse:
        """``customized=true``: the handler's ``describe_handle`` answers too, as
        ``customizedMetadata``, with the status the handler set (TorchServe's RestJob). A model
        without a handler has nothing to add."""
        credentials = _credentials(request)
        if row.state is not ModelState.READY:
            return _error(503, "ServiceUnavailableException", torchserve.no_describe_worker(name))
        metadata = self.data.model_metadata(name, row.version, credentials)
        if not torchserve.is_handler_model(metadata):
            return json_response(answer)
        describe_request = torchserve.decode_describe(name, row.version, metadata.stateful, self.keys)
        describe_request.credentials = credentials
        try:
            response = await self.data.infer(describe_request)
        except ModelError as exc:
            log.error("describe %s: %s", name, exc.message, exc_info=exc)
            return prediction_failed(exc)
        customized = torchserve.customized_metadata(response)
        if customized is not None:
            answer[0]["customizedMetadata"] = customized
        return json_response(answer, torchserve.prediction_status(response))

    async def register_model(self, request: HttpRequest) -> HttpResponse:
        if not self.control.torchserve_model_api:
            return _not_allowed()
        query = _query(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            query = _json_query(request.body)
        java_int = torchserve.java_int
        registration = RegisterRequest(
            url=query.get("url"), model_name=query.get("model_name") or None, runtime=query.get("runtime"),
            handler=query.get("handler"), batch_size=java_int(query.get("batch_size"), -1),
            max_batch_delay_ms=java_int(query.get("max_batch_delay"), -100),
            initial_workers=java_int(query.get("initial_workers"), -(2**31)) if "initial_workers" in query else None,
            synchronous=torchserve.java_bool(query.get("synchronous"), True),
            response_timeout_s=java_int(query.get("response_timeout"), -1),
            startup_timeout_s=java_int(query.get("startup_timeout"), -1))
        if registration.initial_workers == -(2**31):  # given but not a number: TorchServe's default
            registration = replace(registration, initial_workers=None)
        asked = time.time()
        outcome, message = await self.control.register_from_store(registration, _credentials(request))
        self._observe_loads(_credentials(request), asked)
        return _status(outcome, message)

    async def scale(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        query = _query(request)
        version = request.params.get("version") or query.get("model_version")
        min_workers = torchserve.java_int(query.get("min_worker"), 1)
        max_workers = torchserve.java_int(query.get("max_worker"), min_workers)
        synchronous = torchserve.java_bool(query.get("synchronous"), False)
        asked = time.time()
        outcome, message = await self.control.scale_workers(name, version, min_workers, max_workers, synchronous,
                                                            _credentials(request))
        self._observe_loads(_credentials(request), asked)
        return _status(outcome, message)

    async def set_default(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params["version"]
        try:
            self.control.set_default_version(name, version, _credentials(request))
        except NotFound:
            return self._not_found(request, name, version, "Model version {v} does not exist for model {m}")
        return json_response({"status": f'Default version successfully updated for model "{name}" to "{version}"'})

    async def unregister(self, request: HttpRequest) -> HttpResponse:
        if not self.control.torchserve_model_api:
            return _not_allowed()
        name, version = request.params["model"], request.params.get("version")
        await self.control.unregister(name, version, _credentials(request))
        return json_response({"status": f'Model "{name}" unregistered'})  # TorchServe's, with a version too


    # -- workflows (TorchServe's WorkflowManager) ----------------------------------------------
    async def workflow_predict(self, request: HttpRequest) -> HttpResponse:
        """``/wfpredict/{workflow}``: the DAG runs; a node that fails every attempt is a 500
        ``Error executing <node>``, as TorchServe answers (the cause is logged)."""
        credentials = request.headers.get("authorization")
        try:
            workflow = self.control.workflow(request.params["workflow"], credentials)
        except NotFound as exc:
            return _error(404, "WorkflowNotFoundException", exc.message)
        original = Original(bytes(request.body), request.headers.get("content-type", "application/octet-stream"),
                            dict(request.headers))

        async def call(model: str, given: NodeInput) -> bytes:
            return await self._node(model, given, original.headers, credentials)

        try:
            leaves = await run_workflow(workflow, original, call)
        except WorkflowFailed as exc:
            return _error(500, "InternalServerException", exc.message)
        try:
            return HttpResponse(200, torchserve.workflow_leaves(leaves), b"application/json")
        except ValueError as exc:  # several leaves, one of which answered no JSON object
            return _error(500, "InternalServerException", str(exc))

    async def _node(self, model: str, given: NodeInput, headers: dict[str, str], credentials: str | None) -> bytes:
        """One node's call: the handler sees the request (start node), ``{"body": ...}`` (one
        predecessor) or a field per predecessor, and the workflow request's headers, whose sequence
        headers are config.properties' names, as on ``/predictions``; a stateful node's request that
        names no sequence joins the workflow's shared one, as TorchServe's job group ""."""
        if isinstance(given, Original):
            infer_request = torchserve.decode_prediction(given.body, given.content_type, model, None, given.headers,
                                                         self.keys)
        elif list(given) == ["body"]:
            infer_request = torchserve.decode_prediction(given["body"], "application/octet-stream", model, None,
                                                         headers, self.keys)
        else:
            infer_request = torchserve.decode_form_prediction(given, model, None, headers, self.keys)
        infer_request.credentials = credentials
        if self.data.model_metadata(model, None, credentials).stateful:
            torchserve.in_shared_workflow_sequence(infer_request)
        response = await self.data.infer(infer_request)
        status = torchserve.prediction_status(response)
        body = torchserve.encode_prediction(response)[0]
        if status != 200:
            raise ModelError(f"model {model} answered status {status}: {body[:200]!r}")
        return body

    async def list_workflows(self, request: HttpRequest) -> HttpResponse:
        query = _query(request)
        rows = self.control.workflow_urls(_credentials(request))
        return json_response(torchserve.workflow_page(rows, torchserve.java_int(query.get("limit"), 100),
                                                      torchserve.java_int(query.get("next_page_token"), 0)))

    async def describe_workflow(self, request: HttpRequest) -> HttpResponse:
        try:
            workflow = self.control.workflow(request.params["workflow"], _credentials(request))
        except NotFound as exc:
            return _error(404, "WorkflowNotFoundException", exc.message)
        spec = workflow.archive.spec
        return json_response([{"workflowName": workflow.name, "workflowUrl": workflow.url,
                               "minWorkers": spec.settings.min_workers, "maxWorkers": spec.settings.max_workers,
                               "batchSize": spec.settings.batch_size,
                               "maxBatchDelay": spec.settings.max_batch_delay_ms, "workflowDag": spec.dag_text}])

    async def register_workflow(self, request: HttpRequest) -> HttpResponse:
        """``POST /workflows?url=&workflow_name=`` (or the same as a JSON body)."""
        if not self.control.torchserve_model_api:
            return _not_allowed()
        query = _query(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            query = _json_query(request.body)
        try:
            message = await self.control.register_workflow(query.get("url"), query.get("workflow_name") or None,
                                                           _credentials(request))
        except NotFound as exc:
            return _error(404, "WorkflowNotFoundException", exc.message)
        except AlreadyExists as exc:
            return _error(409, "ConflictStatusException", exc.message)
        except InvalidInput as exc:
            return _error(400, "InvalidWorkflowException", exc.message)
        except (Unauthenticated, Forbidden):
            raise
        except InferdError as exc:
            return _error(500, "WorkflowException", exc.message)
        return json_response({"status": message})

    async def unregister_workflow(self, request: HttpRequest) -> HttpResponse:
        if not self.control.torchserve_model_api:
            return _not_allowed()
        name = request.params["workflow"]
        try:
            await self.control.unregister_workflow(name, _credentials(request))
        except NotFound as exc:
            return _error(404, "WorkflowNotFoundException", exc.message)
        return json_response({"status": f'Workflow "{name}" unregistered'})


class CountingApp(HttpApp):
    """TorchServe's inference and management addresses: every answer counts in Requests2XX/4XX/5XX."""

    def __init__(self, router: Router, max_body_bytes: int, metrics: TorchServeMetrics,
                 access_log: bool = False) -> None:
        super().__init__(router, max_body_bytes, access_log)
        self._metrics = metrics

    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        response = await super().dispatch(request)
        self._metrics.response(response.status)
        return response


def _not_allowed() -> HttpResponse:
    """enable_model_api=false: TorchServe answers registering and unregistering with 405, in exactly
    its words (clients compare them); the server's log says how to turn the model API on."""
    log.warning("refused registering or unregistering: the model API is off (enable_model_api=true or "
                "--enable-model-api turns it on)")
    return torchserve_error(405, f"Requested method is not allowed, {_SEE_DOCS}")


_OUTCOME_STATUS = {Outcome.DONE: 200, Outcome.ACCEPTED: 202, Outcome.PARTIAL: 206}


def _status(outcome: Outcome, message: str) -> HttpResponse:
    return json_response({"status": message}, _OUTCOME_STATUS[outcome])


def _credentials(request: HttpRequest) -> str | None:
    return request.headers.get("authorization")


def _url_path(request: HttpRequest) -> str:
    """What follows ``/predictions/{model}/{version}/`` (TorchServe's url_path header)."""
    return "/".join(request.path.strip("/").split("/")[3:])


def _query(request: HttpRequest) -> dict[str, str]:
    """The first value of each parameter (TorchServe's getParameter), blank values kept."""
    query: dict[str, str] = {}
    for key, value in parse_qsl(request.query, keep_blank_values=True):
        query.setdefault(key, value)
    return query


def _json_query(body: bytes | bytearray) -> dict[str, str]:
    """A registration sent as a JSON body (TorchServe takes that too) as query-like strings."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the registration body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the registration body must be a JSON object")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in payload.items() if v is not None}
