#!/usr/bin/env python3
"""Provision the resources declared in template.yaml on a local AWS emulator.

What: reads the SAM/CloudFormation template and creates, on an emulator
(moto server or LocalStack), the data-plane resources it declares: SNS topics
and subscriptions, SQS queues and queue policies, DynamoDB tables. It then
prints the template's Outputs, resolved, as JSON or as CHAT_* env lines.

Why: template.yaml is the single source of truth for AWS resources. Emulators
either lack CloudFormation (moto server's support is partial, LocalStack's is
not loaded when SERVICES is restricted) or do not understand the SAM
transform, so instead of keeping a second, hand-written list of local
resources that would drift, this script interprets the template itself.

Scope:
  * Intrinsics: Ref (resources, Parameters' Default or --parameter, pseudo
    parameters), Fn::GetAtt, Fn::Sub (both forms), Fn::Join, Fn::Select,
    Fn::Split, Fn::FindInMap, Fn::If and conditions, Fn::Base64, Fn::Cidr,
    Fn::GetAZs; short (!Ref) and long (Ref:) forms alike.
  * Idempotent: re-running against a provisioned emulator changes nothing;
    attributes that differ from the template are updated in place. Things
    that cannot change in place (table keys/indexes, FIFO-ness) fail with a
    message asking to reset the emulator; attributes removed from the
    template are left as they are (emulators are meant to be thrown away).
  * Other resource types (Lambda/Serverless functions, IAM, ECS, Logs,
    EventBridge rules, event source mappings, ...) are skipped, with one
    summary line (--verbose: a note per resource): the local function
    runners stand in for them. A resource whose properties need a skipped
    resource's value is skipped too.
  * Resources without an explicit name get "<stack-name>-<LogicalId>" (CFN
    would add a random suffix; a fixed name keeps re-runs idempotent).

Only boto3 and PyYAML are used, so this also runs inside the LocalStack
image (see localstack/init/ready.d/10-provision.sh).

Usage:
  provision.py --template template.yaml --endpoint http://127.0.0.1:4566 \
      [--region us-east-1] [--stack-name chat] [--format json|env] [--verbose]

Progress and notes go to stderr; only the outputs go to stdout. Exit status
is 0 on success, 1 on a provisioning error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import re
import sys
import time

try:
    import boto3
    import yaml
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # say which dependency is missing instead of a bare traceback
    sys.stderr.write(f"provision.py: error: {exc}; install boto3 and PyYAML "
                     "(pip install -r localstack/requirements-moto.txt)\n")
    sys.exit(1)

DEFAULT_ACCOUNT_ID = "123456789012"  # moto's default account


class ProvisionError(Exception):
    """A failure worth a clear one-line message and a non-zero exit."""


class NotProvisioned(Exception):
    """A Ref/GetAtt reached a resource that is not created on the emulator."""

    def __init__(self, logical_id: str):
        super().__init__(logical_id)
        self.logical_id = logical_id


def note(msg: str) -> None:
    print(f"provision: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# YAML loading with CloudFormation tags
# --------------------------------------------------------------------------

class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns !Ref/!Sub/... into their long-form mappings."""


# CloudFormation reads an unquoted 2024-01-01 as a string; YAML would make it a
# date object that then serialises differently.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SHORT_TAGS = {
    "Ref": "Ref", "Condition": "Condition",
    **{name: "Fn::" + name for name in (
        "Base64", "Cidr", "FindInMap", "GetAtt", "GetAZs", "ImportValue", "Join",
        "Select", "Split", "Sub", "Transform", "And", "Equals", "If", "Not", "Or",
        "Length", "ToJsonString")},
}


def _construct_cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node):
    if suffix not in _SHORT_TAGS:
        raise yaml.constructor.ConstructorError(
            None, None, f"unknown CloudFormation tag !{suffix}", node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        # "Res.Attr.Sub" -> ["Res", "Attr.Sub"]: nested attribute names keep their dots.
        value = value.split(".", 1)
    return {_SHORT_TAGS[suffix]: value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            template = yaml.load(fh, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise ProvisionError(f"cannot read template {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ProvisionError(f"cannot parse template {path}: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ProvisionError(f"{path}: not a CloudFormation template (no Resources mapping)")
    return template


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_NO_VALUE = object()  # AWS::NoValue: the enclosing key or list item disappears


def to_str(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise ProvisionError(f"expected a string, got {json.dumps(value)[:80]}")
    return str(value)


def attr_value(value, is_json: bool) -> str:
    """Encode a template property as an SNS/SQS attribute string."""
    if is_json and isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return to_str(value)


def _normalise(value):
    # Compare JSON documents by content: emulators may echo 5 as "5" or reorder keys.
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return to_str(value)


def attr_equal(desired: str, actual, is_json: bool) -> bool:
    if actual is None:
        # Attributes at their default are often simply not echoed back.
        return desired in ("", "false")
    if is_json:
        try:
            return _normalise(json.loads(desired)) == _normalise(json.loads(actual))
        except (ValueError, TypeError):
            pass
    return desired.lower() == str(actual).lower() if desired.lower() in ("true", "false") \
        else desired == str(actual)


def cfn_tags(props: dict) -> dict:
    tags = props.get("Tags") or []
    if isinstance(tags, dict):  # SAM style Tags: {Key: Value}
        return {str(k): to_str(v) for k, v in tags.items()}
    return {str(t["Key"]): to_str(t["Value"]) for t in tags}


def env_name(output_key: str) -> str:
    """TopicArn -> CHAT_TOPIC_ARN, SendDedupTable -> CHAT_SEND_DEDUP_TABLE."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", output_key)
    return "CHAT_" + re.sub(r"[^A-Za-z0-9]+", "_", snake).strip("_").upper()


class Deadline:
    """Every wait is bounded: an emulator that hangs must not hang CI."""

    def __init__(self, seconds: float, what: str):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def check(self, detail: str = "") -> None:
        if time.monotonic() > self.end:
            raise ProvisionError(f"timed out after {self.seconds:g}s waiting for {self.what}"
                                 + (f" ({detail})" if detail else ""))


# --------------------------------------------------------------------------
# Template evaluation
# --------------------------------------------------------------------------

class Stack:
    def __init__(self, template: dict, *, stack_name: str, region: str, account_id: str,
                 parameters: dict[str, str]):
        self.template = template
        self.resources: dict = template["Resources"]
        self.stack_name = stack_name
        self.region = region
        self.account_id = account_id
        self.partition = ("aws-cn" if region.startswith("cn-")
                          else "aws-us-gov" if region.startswith("us-gov-") else "aws")
        self.param_overrides = parameters
        self.physical: dict[str, object] = {}   # logical id -> value of Ref
        self.attrs: dict[str, dict] = {}        # logical id -> Fn::GetAtt values
        self.skipped: dict[str, str] = {}       # logical id -> reason
        self._conditions: dict[str, bool] = {}
        unknown = set(parameters) - set(template.get("Parameters") or {})
        if unknown:
            raise ProvisionError(f"--parameter given for undeclared parameter(s): {', '.join(sorted(unknown))}")

    # ---- references ---------------------------------------------------

    def pseudo(self, name: str):
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com",
            "AWS::StackId": (f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}"
                             f":stack/{self.stack_name}/00000000-0000-0000-0000-000000000000"),
            "AWS::NotificationARNs": [],
            "AWS::NoValue": _NO_VALUE,
        }[name]

    def parameter(self, name: str):
        decl = (self.template.get("Parameters") or {})[name] or {}
        ptype = str(decl.get("Type", "String"))
        if name in self.param_overrides:
            value = self.param_overrides[name]
        elif "Default" in decl and not ptype.startswith("AWS::SSM::Parameter::Value"):
            value = decl["Default"]
        else:
            raise ProvisionError(f"parameter {name} has no usable Default; pass --parameter {name}=VALUE")
        if ptype == "CommaDelimitedList" or ptype.startswith("List<"):
            return [s.strip() for s in value] if isinstance(value, list) \
                else [s.strip() for s in to_str(value).split(",")]
        return to_str(value)

    def ref(self, name):
        if not isinstance(name, str):
            raise ProvisionError(f"Ref needs a name, got {name!r}")
        if name.startswith("AWS::"):
            try:
                return self.pseudo(name)
            except KeyError:
                raise ProvisionError(f"unknown pseudo parameter {name}") from None
        if name in (self.template.get("Parameters") or {}):
            return self.parameter(name)
        if name in self.physical:
            return self.physical[name]
        if name in self.skipped:
            raise NotProvisioned(name)
        if name in self.resources:  # only reachable if the dependency sort is wrong
            raise ProvisionError(f"internal error: {name} referenced before it was provisioned")
        raise ProvisionError(f"Ref to unknown parameter or resource {name!r}")

    def get_att(self, name: str, attr: str):
        if name in self.attrs:
            if attr in self.attrs[name] and self.attrs[name][attr] is not None:
                return self.attrs[name][attr]
            rtype = self.resources[name].get("Type")
            known = ", ".join(k for k, v in self.attrs[name].items() if v is not None) or "none"
            raise ProvisionError(f"Fn::GetAtt {name}.{attr}: not available for {rtype} "
                                 f"on the emulator (available: {known})")
        if name in self.skipped or self.sam_generated_by_skipped(name):
            raise NotProvisioned(name)
        if name in self.resources:
            raise ProvisionError(f"internal error: {name} referenced before it was provisioned")
        raise ProvisionError(f"Fn::GetAtt on unknown resource {name!r}")

    # Resources the SAM transform generates for a function, by logical id suffix.
    _SAM_FUNCTION_SUFFIXES = ("Url", "Role", "Alias", "Version")

    def sam_generated_by_skipped(self, name: str) -> bool:
        """`<Fn>Url`, `<Fn>Role`, ...: generated by SAM for a skipped function."""
        for suffix in self._SAM_FUNCTION_SUFFIXES:
            base = name[:-len(suffix)] if name.endswith(suffix) else None
            if base and base in self.skipped and \
                    self.resources.get(base, {}).get("Type") == "AWS::Serverless::Function":
                return True
        return False

    # ---- conditions ---------------------------------------------------

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise ProvisionError(f"unknown condition {name!r}")
            self._conditions[name] = self.eval_condition(conditions[name])
        return self._conditions[name]

    def eval_condition(self, expr) -> bool:
        if isinstance(expr, bool):
            return expr
        if isinstance(expr, dict) and len(expr) == 1:
            (fn, arg), = expr.items()
            if fn == "Condition":
                return self.condition(arg)
            if fn == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return _normalise(a) == _normalise(b)
            if fn == "Fn::Not":
                return not self.eval_condition(arg[0])
            if fn == "Fn::And":
                return all(self.eval_condition(x) for x in arg)
            if fn == "Fn::Or":
                return any(self.eval_condition(x) for x in arg)
        value = self.resolve(expr)
        if isinstance(value, bool):
            return value
        raise ProvisionError(f"not a condition expression: {json.dumps(expr)[:120]}")

    # ---- intrinsic functions ------------------------------------------

    _SUB_RE = re.compile(r"\$\{([^}]*)\}")

    def sub(self, arg) -> str:
        if isinstance(arg, list):
            if len(arg) != 2 or not isinstance(arg[1], dict):
                raise ProvisionError("Fn::Sub takes a string or [string, {variables}]")
            text, variables = arg[0], {k: self.resolve(v) for k, v in arg[1].items()}
        else:
            text, variables = arg, {}
        if not isinstance(text, str):
            raise ProvisionError("Fn::Sub needs a string")

        def replace(match: re.Match) -> str:
            expr = match.group(1)
            if expr.startswith("!"):  # ${!Literal} stays literally ${Literal}
                return "${" + expr[1:] + "}"
            expr = expr.strip()
            if expr in variables:
                return to_str(variables[expr])
            if "." in expr and not expr.startswith("AWS::"):
                return to_str(self.get_att(*expr.split(".", 1)))
            return to_str(self.ref(expr))

        return self._SUB_RE.sub(replace, text)

    def resolve(self, value):
        """Evaluate every intrinsic function inside value."""
        if isinstance(value, list):
            out = [self.resolve(v) for v in value]
            return [v for v in out if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" or key.startswith("Fn::"):
                return self.intrinsic(key, arg)
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}

    def intrinsic(self, fn: str, arg):
        if fn == "Ref":
            return self.ref(arg)
        if fn == "Fn::GetAtt":
            if isinstance(arg, str):
                arg = arg.split(".", 1)
            if not (isinstance(arg, list) and len(arg) == 2):
                raise ProvisionError(f"Fn::GetAtt needs [Resource, Attribute], got {arg!r}")
            return self.get_att(arg[0], to_str(self.resolve(arg[1])))
        if fn == "Fn::Sub":
            return self.sub(arg)
        if fn == "Fn::If":
            cond, when_true, when_false = arg
            return self.resolve(when_true if self.condition(cond) else when_false)
        if fn in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
            return self.eval_condition({fn: arg})
        if fn == "Fn::Join":
            delim, items = arg
            items = self.resolve(items)
            return to_str(delim).join(to_str(i) for i in items)
        if fn == "Fn::Select":
            index, items = self.resolve(arg[0]), self.resolve(arg[1])
            try:
                return items[int(index)]
            except (IndexError, ValueError, TypeError):
                raise ProvisionError(f"Fn::Select index {index!r} out of range") from None
        if fn == "Fn::Split":
            delim, text = arg
            return to_str(self.resolve(text)).split(to_str(delim))
        if fn == "Fn::FindInMap":
            default = None
            if len(arg) == 4 and isinstance(arg[3], dict) and "DefaultValue" in arg[3]:
                default = arg[3]["DefaultValue"]
            name, key1, key2 = (to_str(self.resolve(x)) for x in arg[:3])
            try:
                return self.resolve(self.template["Mappings"][name][key1][key2])
            except (KeyError, TypeError):
                if default is not None:
                    return self.resolve(default)
                raise ProvisionError(f"Fn::FindInMap: {name}/{key1}/{key2} not in Mappings") from None
        if fn == "Fn::Base64":
            return base64.b64encode(to_str(self.resolve(arg)).encode()).decode()
        if fn == "Fn::GetAZs":
            region = to_str(self.resolve(arg)) or self.region
            return [f"{region}{zone}" for zone in "abc"]
        if fn == "Fn::Cidr":
            block, count, bits = (self.resolve(x) for x in arg)
            net = ipaddress.ip_network(to_str(block), strict=False)
            subnets = net.subnets(new_prefix=net.max_prefixlen - int(bits))
            return [str(s) for _, s in zip(range(int(count)), subnets)]
        if fn == "Fn::Length":
            return len(self.resolve(arg))
        if fn == "Fn::ToJsonString":
            return json.dumps(self.resolve(arg), separators=(",", ":"))
        if fn == "Fn::ImportValue":
            raise ProvisionError("Fn::ImportValue (cross-stack export) cannot be resolved on an emulator")
        raise ProvisionError(f"intrinsic function {fn} is not supported by provision.py")

    # ---- ordering -----------------------------------------------------

    def dependencies(self, logical_id: str) -> set[str]:
        found: set[str] = set()

        def walk(node):
            if isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                if len(node) == 1:
                    (key, arg), = node.items()
                    if key == "Ref" and isinstance(arg, str):
                        found.add(arg)
                        return
                    if key == "Fn::GetAtt":
                        target = arg.split(".", 1)[0] if isinstance(arg, str) else arg[0]
                        found.add(target)
                        if isinstance(arg, list):
                            walk(arg[1:])
                        return
                    if key == "Fn::Sub":
                        text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
                        for expr in self._SUB_RE.findall(text if isinstance(text, str) else ""):
                            expr = expr.strip()
                            if not expr.startswith("!") and expr not in variables:
                                found.add(expr.split(".", 1)[0])
                        walk(variables)
                        return
                for value in node.values():
                    walk(value)

        resource = self.resources[logical_id] or {}
        walk(resource.get("Properties") or {})
        depends_on = resource.get("DependsOn") or []
        depends_on = [depends_on] if isinstance(depends_on, str) else depends_on
        for dep in depends_on:
            if dep not in self.resources:
                raise ProvisionError(f"{logical_id}: DependsOn unknown resource {dep!r}")
        found.update(depends_on)
        return {d for d in found if d in self.resources and d != logical_id}

    def order(self) -> list[str]:
        """Topological order; ties keep template order so output is stable."""
        ids = list(self.resources)
        deps = {lid: self.dependencies(lid) for lid in ids}
        done: list[str] = []
        remaining = list(ids)
        while remaining:
            ready = [lid for lid in remaining if deps[lid] <= set(done)]
            if not ready:
                raise ProvisionError("circular dependency between resources: " + ", ".join(remaining))
            done.append(ready[0])
            remaining.remove(ready[0])
        return done


# --------------------------------------------------------------------------
# Resource handlers. Each returns (status, extra note) and records Ref/GetAtt.
# --------------------------------------------------------------------------

TOPIC_ATTRS = {  # CFN property -> is JSON
    "DisplayName": False, "KmsMasterKeyId": False, "FifoTopic": False,
    "ContentBasedDeduplication": False, "SignatureVersion": False, "TracingConfig": False,
    "FifoThroughputScope": False, "ArchivePolicy": True, "DeliveryPolicy": True,
}
QUEUE_ATTRS = {
    "ContentBasedDeduplication": False, "DeduplicationScope": False, "DelaySeconds": False,
    "FifoQueue": False, "FifoThroughputLimit": False, "KmsDataKeyReusePeriodSeconds": False,
    "KmsMasterKeyId": False, "MaximumMessageSize": False, "MessageRetentionPeriod": False,
    "ReceiveMessageWaitTimeSeconds": False, "SqsManagedSseEnabled": False,
    "VisibilityTimeout": False, "RedrivePolicy": True, "RedriveAllowPolicy": True,
}
SUBSCRIPTION_ATTRS = {
    "RawMessageDelivery": False, "FilterPolicyScope": False, "SubscriptionRoleArn": False,
    "FilterPolicy": True, "RedrivePolicy": True, "DeliveryPolicy": True, "ReplayPolicy": True,
}
# DynamoDB properties with no useful meaning on an emulator.
TABLE_IGNORED = {"PointInTimeRecoverySpecification", "SSESpecification",
                 "ContributorInsightsSpecification", "KinesisStreamSpecification",
                 "ImportSourceSpecification", "ResourcePolicy", "WarmThroughput"}


class Provisioner:
    def __init__(self, session, endpoint: str, stack: Stack, timeout: float, verbose: bool = False):
        self.session = session
        self.endpoint = endpoint
        self.stack = stack
        self.timeout = timeout
        self.verbose = verbose
        self._clients: dict = {}
        # Bounded connect/read times and retries: never hang on a dead emulator.
        self._config = Config(connect_timeout=5, read_timeout=30,
                              retries={"max_attempts": 3, "mode": "standard"})

    def client(self, service: str, region: str | None = None):
        key = (service, region or self.stack.region)
        if key not in self._clients:
            # A per-service endpoint wins (SNS/SQS on LocalStack, DynamoDB on moto).
            endpoint = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or self.endpoint
            self._clients[key] = self.session.client(
                service, region_name=key[1], endpoint_url=endpoint, config=self._config)
        return self._clients[key]

    def default_name(self, logical_id: str, suffix: str = "") -> str:
        return f"{self.stack.stack_name}-{logical_id}{suffix}"

    @staticmethod
    def unused(props: dict, handled) -> list[str]:
        return sorted(k for k in props if k not in handled)

    # ---- SNS ----------------------------------------------------------

    def sns_topic(self, lid: str, props: dict):
        sns = self.client("sns")
        fifo = to_str(props.get("FifoTopic", False)).lower() == "true"
        name = to_str(props.get("TopicName") or self.default_name(lid, ".fifo" if fifo else ""))
        attrs = {k: attr_value(props[k], j) for k, j in TOPIC_ATTRS.items() if k in props}
        if not fifo:
            attrs.pop("FifoTopic", None)  # standard topics reject an explicit FifoTopic=false
        tags = cfn_tags(props)

        arn = None
        for page in sns.get_paginator("list_topics").paginate():
            for topic in page.get("Topics", []):
                if topic["TopicArn"].split(":")[-1] == name:
                    arn = topic["TopicArn"]
        status = "unchanged"
        if arn is None:
            kwargs = {"Name": name, "Attributes": attrs}
            if tags:
                kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
            arn = sns.create_topic(**kwargs)["TopicArn"]
            status = "created"
        else:
            current = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
            for key, want in attrs.items():
                if attr_equal(want, current.get(key), TOPIC_ATTRS[key]):
                    continue
                if key == "FifoTopic":
                    raise ProvisionError(f"topic {name} exists with FifoTopic={current.get(key)}; "
                                         "that cannot change in place: reset the emulator")
                sns.set_topic_attributes(TopicArn=arn, AttributeName=key, AttributeValue=want)
                status = "updated"
            if tags:
                have = {t["Key"]: t["Value"] for t in
                        sns.list_tags_for_resource(ResourceArn=arn).get("Tags", [])}
                missing = [{"Key": k, "Value": v} for k, v in tags.items() if have.get(k) != v]
                if missing:
                    sns.tag_resource(ResourceArn=arn, Tags=missing)
                    status = "updated"

        for inline in props.get("Subscription") or []:  # inline Subscription list of a topic
            sub_status, _ = self._ensure_subscription(sns, arn, to_str(inline["Protocol"]),
                                                      to_str(inline["Endpoint"]), {})
            if sub_status != "unchanged" and status == "unchanged":
                status = "updated"

        self.stack.physical[lid] = arn
        self.stack.attrs[lid] = {"TopicArn": arn, "TopicName": name}
        handled = set(TOPIC_ATTRS) | {"TopicName", "Tags", "Subscription"}
        return status, f"{arn}", self.unused(props, handled)

    def _ensure_subscription(self, sns, topic_arn: str, protocol: str, endpoint: str | None,
                             attrs: dict[str, str]):
        existing = None
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
            for sub in page.get("Subscriptions", []):
                if sub["Protocol"] == protocol and sub.get("Endpoint") == endpoint:
                    existing = sub["SubscriptionArn"]
        if existing is None:
            kwargs = {"TopicArn": topic_arn, "Protocol": protocol, "ReturnSubscriptionArn": True}
            if endpoint is not None:
                kwargs["Endpoint"] = endpoint
            if attrs:
                kwargs["Attributes"] = attrs
            return "created", sns.subscribe(**kwargs)["SubscriptionArn"]
        if not existing.startswith("arn:"):
            # e.g. "PendingConfirmation" for http(s)/email: attributes cannot be read yet.
            note(f"subscription {protocol}:{endpoint} on {topic_arn} is {existing}; attributes not checked")
            return "unchanged", existing
        current = sns.get_subscription_attributes(SubscriptionArn=existing)["Attributes"]
        status = "unchanged"
        for key, want in attrs.items():
            if not attr_equal(want, current.get(key), SUBSCRIPTION_ATTRS[key]):
                sns.set_subscription_attributes(SubscriptionArn=existing, AttributeName=key,
                                                AttributeValue=want)
                status = "updated"
        return status, existing

    def sns_subscription(self, lid: str, props: dict):
        for required in ("Protocol", "TopicArn"):
            if required not in props:
                raise ProvisionError(f"property {required} is required")
        sns = self.client("sns", props.get("Region"))
        attrs = {k: attr_value(props[k], j) for k, j in SUBSCRIPTION_ATTRS.items() if k in props}
        endpoint = to_str(props["Endpoint"]) if "Endpoint" in props else None
        status, arn = self._ensure_subscription(sns, to_str(props["TopicArn"]),
                                                to_str(props["Protocol"]), endpoint, attrs)
        self.stack.physical[lid] = arn
        self.stack.attrs[lid] = {"Arn": arn}
        handled = set(SUBSCRIPTION_ATTRS) | {"Protocol", "Endpoint", "TopicArn", "Region"}
        return status, arn, self.unused(props, handled)

    # ---- SQS ----------------------------------------------------------

    def sqs_queue(self, lid: str, props: dict):
        sqs = self.client("sqs")
        fifo = to_str(props.get("FifoQueue", False)).lower() == "true"
        name = to_str(props.get("QueueName") or self.default_name(lid, ".fifo" if fifo else ""))
        if fifo != name.endswith(".fifo"):
            raise ProvisionError(f"queue name {name!r}: FIFO queue names must end in .fifo, others must not")
        if len(name) > 80:
            raise ProvisionError(f"queue name {name!r} is longer than SQS's 80 characters; set QueueName")
        attrs = {k: attr_value(props[k], j) for k, j in QUEUE_ATTRS.items() if k in props}
        if not fifo:
            attrs.pop("FifoQueue", None)  # SQS rejects FifoQueue=false on standard queues
        tags = cfn_tags(props)

        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                raise
            url = None
        status = "unchanged"
        if url is None:
            kwargs = {"QueueName": name, "Attributes": attrs}
            if tags:
                kwargs["tags"] = tags
            url = sqs.create_queue(**kwargs)["QueueUrl"]
            status = "created"
        else:
            current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
            changes = {}
            for key, want in attrs.items():
                if attr_equal(want, current.get(key), QUEUE_ATTRS[key]):
                    continue
                if key == "FifoQueue":
                    raise ProvisionError(f"queue {name} exists with FifoQueue={current.get(key)}; "
                                         "that cannot change in place: reset the emulator")
                changes[key] = want
            if changes:
                # moto resets Policy when SetQueueAttributes omits it; resend the current one.
                if current.get("Policy") and "Policy" not in changes:
                    changes["Policy"] = current["Policy"]
                sqs.set_queue_attributes(QueueUrl=url, Attributes=changes)
                status = "updated"
            if tags:
                have = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
                missing = {k: v for k, v in tags.items() if have.get(k) != v}
                if missing:
                    sqs.tag_queue(QueueUrl=url, Tags=missing)
                    status = "updated"

        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.stack.physical[lid] = url
        self.stack.attrs[lid] = {"Arn": arn, "QueueName": name, "QueueUrl": url}
        return status, url, self.unused(props, set(QUEUE_ATTRS) | {"QueueName", "Tags"})

    def sqs_queue_policy(self, lid: str, props: dict):
        if "PolicyDocument" not in props or not props.get("Queues"):
            raise ProvisionError("PolicyDocument and Queues are required")
        sqs = self.client("sqs")
        policy = attr_value(props["PolicyDocument"], True)
        status = "unchanged"
        for url in props["Queues"]:
            url = to_str(url)
            current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]) \
                .get("Attributes", {}).get("Policy")
            if not attr_equal(policy, current, True) or current is None:
                sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
                status = "created" if current is None else "updated"
        # CFN's Ref of a queue policy is an opaque id; nothing should depend on its value.
        self.stack.physical[lid] = self.default_name(lid)
        self.stack.attrs[lid] = {}
        return status, ", ".join(map(str, props["Queues"])), self.unused(props, {"PolicyDocument", "Queues"})

    # ---- DynamoDB -----------------------------------------------------

    def _wait_table(self, ddb, name: str) -> dict:
        deadline = Deadline(self.timeout, f"DynamoDB table {name} to become ACTIVE")
        while True:
            table = ddb.describe_table(TableName=name)["Table"]
            pending = [g["IndexName"] for g in table.get("GlobalSecondaryIndexes", [])
                       if g.get("IndexStatus", "ACTIVE") != "ACTIVE"]
            if table["TableStatus"] == "ACTIVE" and not pending:
                return table
            deadline.check(f"table {table['TableStatus']}, indexes pending: {pending or 'none'}")
            time.sleep(0.5)

    @staticmethod
    def _index(spec: dict, with_throughput: bool) -> dict:
        out = {"IndexName": spec["IndexName"], "KeySchema": spec["KeySchema"],
               "Projection": spec["Projection"]}
        if with_throughput and "ProvisionedThroughput" in spec:
            out["ProvisionedThroughput"] = {k: int(v) for k, v in spec["ProvisionedThroughput"].items()}
        if with_throughput and "OnDemandThroughput" in spec:
            out["OnDemandThroughput"] = {k: int(v) for k, v in spec["OnDemandThroughput"].items()}
        return out

    @staticmethod
    def _keys(schema) -> list:
        return [(k["AttributeName"], k["KeyType"]) for k in schema or []]

    def dynamodb_table(self, lid: str, props: dict):
        ddb = self.client("dynamodb")
        name = to_str(props.get("TableName") or self.default_name(lid))
        for required in ("KeySchema", "AttributeDefinitions"):
            if required not in props:
                raise ProvisionError(f"property {required} is required")
        billing = to_str(props.get("BillingMode", "PROVISIONED"))
        gsis = [self._index(g, True) for g in props.get("GlobalSecondaryIndexes") or []]
        lsis = [self._index(i, False) for i in props.get("LocalSecondaryIndexes") or []]
        stream = props.get("StreamSpecification")
        want_stream = {"StreamEnabled": True, "StreamViewType": to_str(stream["StreamViewType"])} \
            if stream else None
        tags = cfn_tags(props)

        try:
            table = ddb.describe_table(TableName=name)["Table"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            table = None

        status = "unchanged"
        if table is None:
            kwargs = {"TableName": name, "KeySchema": props["KeySchema"],
                      "AttributeDefinitions": props["AttributeDefinitions"], "BillingMode": billing}
            if billing == "PROVISIONED":
                if "ProvisionedThroughput" not in props:
                    raise ProvisionError("ProvisionedThroughput is required unless BillingMode is PAY_PER_REQUEST")
                kwargs["ProvisionedThroughput"] = {k: int(v) for k, v in props["ProvisionedThroughput"].items()}
            if gsis:
                kwargs["GlobalSecondaryIndexes"] = gsis
            if lsis:
                kwargs["LocalSecondaryIndexes"] = lsis
            if want_stream:
                kwargs["StreamSpecification"] = want_stream
            for key in ("TableClass", "DeletionProtectionEnabled"):
                if key in props:
                    kwargs[key] = props[key]
            if "OnDemandThroughput" in props:
                kwargs["OnDemandThroughput"] = {k: int(v) for k, v in props["OnDemandThroughput"].items()}
            if tags:
                kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
            ddb.create_table(**kwargs)
            status = "created"
        else:
            # Keys and indexes cannot be altered in place by DynamoDB; say so rather than drift.
            mismatch = []
            if self._keys(table.get("KeySchema")) != self._keys(props["KeySchema"]):
                mismatch.append("KeySchema")
            have_gsi = {g["IndexName"]: self._keys(g["KeySchema"]) for g in table.get("GlobalSecondaryIndexes", [])}
            if have_gsi != {g["IndexName"]: self._keys(g["KeySchema"]) for g in gsis}:
                mismatch.append("GlobalSecondaryIndexes")
            have_lsi = {i["IndexName"]: self._keys(i["KeySchema"]) for i in table.get("LocalSecondaryIndexes", [])}
            if have_lsi != {i["IndexName"]: self._keys(i["KeySchema"]) for i in lsis}:
                mismatch.append("LocalSecondaryIndexes")
            if mismatch:
                raise ProvisionError(f"table {name} exists with different {', '.join(mismatch)}; "
                                     "DynamoDB cannot change that in place: reset the emulator and re-run")

        table = self._wait_table(ddb, name)

        if status != "created":
            current = table.get("StreamSpecification") or {}
            have_stream = {"StreamEnabled": True, "StreamViewType": current.get("StreamViewType")} \
                if current.get("StreamEnabled") else None
            if have_stream != want_stream:
                if have_stream:  # a view type change needs the stream switched off first
                    ddb.update_table(TableName=name, StreamSpecification={"StreamEnabled": False})
                    table = self._wait_table(ddb, name)
                if want_stream:
                    ddb.update_table(TableName=name, StreamSpecification=want_stream)
                    table = self._wait_table(ddb, name)
                status = "updated"
            if tags:
                have = {}
                for page in _pages(ddb.list_tags_of_resource, "NextToken", ResourceArn=table["TableArn"]):
                    have.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
                missing = [{"Key": k, "Value": v} for k, v in tags.items() if have.get(k) != v]
                if missing:
                    ddb.tag_resource(ResourceArn=table["TableArn"], Tags=missing)
                    status = "updated"

        ttl = props.get("TimeToLiveSpecification")
        if ttl is not None and self._apply_ttl(ddb, name, ttl) and status == "unchanged":
            status = "updated"

        self.stack.physical[lid] = name
        self.stack.attrs[lid] = {"Arn": table["TableArn"], "StreamArn": table.get("LatestStreamArn")}
        handled = {"TableName", "KeySchema", "AttributeDefinitions", "BillingMode",
                   "ProvisionedThroughput", "GlobalSecondaryIndexes", "LocalSecondaryIndexes",
                   "StreamSpecification", "TableClass", "DeletionProtectionEnabled",
                   "OnDemandThroughput", "Tags", "TimeToLiveSpecification"}
        return status, name, self.unused(props, handled)

    def _apply_ttl(self, ddb, name: str, spec: dict) -> bool:
        """Converge TTL (only possible once the table is ACTIVE). True if changed."""
        want_on = to_str(spec.get("Enabled", False)).lower() == "true"
        want_attr = spec.get("AttributeName")
        if want_on and not want_attr:
            raise ProvisionError("TimeToLiveSpecification.AttributeName is required when Enabled")
        desc = ddb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
        on = desc.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        have_attr = desc.get("AttributeName")
        if want_on and on and have_attr == want_attr:
            return False
        if not want_on and not on:
            return False
        if on:  # switching attribute, or turning off
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "Enabled": False, "AttributeName": have_attr})
        if want_on:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": to_str(want_attr)})
        return True

    HANDLERS = {
        "AWS::SNS::Topic": sns_topic,
        "AWS::SNS::Subscription": sns_subscription,
        "AWS::SQS::Queue": sqs_queue,
        "AWS::SQS::QueuePolicy": sqs_queue_policy,
        "AWS::DynamoDB::Table": dynamodb_table,
    }

    # ---- driver -------------------------------------------------------

    def run(self) -> dict[str, int]:
        counts = {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0}
        skipped: list[tuple[str, str]] = []  # (type, why), in template order
        stack = self.stack
        for lid in stack.order():
            resource = stack.resources[lid] or {}
            rtype = resource.get("Type", "?")
            label = f"{lid} ({rtype})"
            cond = resource.get("Condition")
            if cond is not None and not stack.condition(cond):
                stack.skipped[lid] = "condition false"
                skipped.append((rtype, f"skip {label}: condition {cond} is false"))
                continue
            handler = self.HANDLERS.get(rtype)
            if handler is None:
                stack.skipped[lid] = "type not emulated"
                skipped.append((rtype, f"skip {label}: not provisioned on the emulator (local runners stand in for it)"))
                continue
            try:
                props = stack.resolve(resource.get("Properties") or {})
            except NotProvisioned as exc:
                stack.skipped[lid] = f"needs {exc.logical_id}"
                skipped.append((rtype, f"skip {label}: needs {exc.logical_id}, which is not provisioned on the emulator"))
                continue
            except ProvisionError as exc:
                raise ProvisionError(f"{label}: {exc}") from None
            try:
                status, detail, ignored = handler(self, lid, props)
            except ProvisionError as exc:
                raise ProvisionError(f"{label}: {exc}") from None
            except ClientError as exc:
                err = exc.response.get("Error", {})
                raise ProvisionError(f"{label}: {exc.operation_name} failed: "
                                     f"{err.get('Code')}: {err.get('Message')}") from None
            counts[status] += 1
            extra = f" [ignored on the emulator: {', '.join(ignored)}]" if ignored else ""
            note(f"{status:9} {label}: {detail}{extra}")
        counts["skipped"] = len(skipped)
        if self.verbose:
            for _, why in skipped:
                note(why)
        elif skipped:
            # Every run skips the same resources: one line, not one per resource.
            by_type: dict[str, int] = {}
            for rtype, _ in skipped:
                short = rtype.removeprefix("AWS::")
                by_type[short] = by_type.get(short, 0) + 1
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
            note(f"skipped {len(skipped)} resources the emulator does not run ({kinds}); "
                 "local runners stand in for the functions; --verbose lists each and why")
        return counts

    def outputs(self) -> dict[str, str]:
        result = {}
        for key, output in (self.stack.template.get("Outputs") or {}).items():
            output = output or {}
            cond = output.get("Condition")
            if cond is not None and not self.stack.condition(cond):
                continue
            try:
                value = self.stack.resolve(output.get("Value"))
            except NotProvisioned as exc:
                note(f"output {key} omitted: needs {exc.logical_id}, which is not provisioned on the emulator")
                continue
            except ProvisionError as exc:
                raise ProvisionError(f"output {key}: {exc}") from None
            result[key] = ",".join(map(to_str, value)) if isinstance(value, list) else to_str(value)
        return result


def _pages(call, token_key: str, **kwargs):
    """Manual pagination for calls botocore has no paginator for."""
    while True:
        page = call(**kwargs)
        yield page
        if not page.get(token_key):
            return
        kwargs[token_key] = page[token_key]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def make_session(region: str):
    # Instance-metadata credentials make no sense against an emulator, and
    # probing for them costs seconds on machines that have none.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        # Emulators accept any credentials; this path is only reached with an endpoint.
        note("no AWS credentials configured; using test/test for the emulator")
        session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                region_name=region)
    return session


def account_id(session, endpoint: str, region: str, timeout: float) -> str:
    """Ask STS; this call doubles as the wait for the emulator to accept requests."""
    sts = session.client("sts", region_name=region, endpoint_url=endpoint,
                         config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}))
    deadline = Deadline(timeout, f"the emulator at {endpoint} to answer")
    while True:
        try:
            return sts.get_caller_identity()["Account"]
        except ClientError as exc:
            # The endpoint answers but has no STS (e.g. LocalStack with SERVICES lacking sts).
            key = session.get_credentials().access_key or ""
            fallback = key if re.fullmatch(r"\d{12}", key) else DEFAULT_ACCOUNT_ID
            note(f"STS unavailable ({exc.response['Error'].get('Code')}); assuming account {fallback}")
            return fallback
        except BotoCoreError as exc:  # connection refused/reset, timeouts: not up yet
            deadline.check(str(exc))
            time.sleep(0.5)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Create on an AWS emulator the resources that template.yaml declares.")
    parser.add_argument("--template", required=True, help="path to the SAM/CloudFormation template")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="emulator URL, e.g. http://127.0.0.1:4566 (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--stack-name", default="chat", help="value of AWS::StackName (default: chat)")
    parser.add_argument("--format", choices=("json", "env"), default="json",
                        help="json: one object OutputKey -> value; env: CHAT_<OUTPUT_KEY>=value lines")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="override a template parameter (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the emulator and for each table (default: 60)")
    parser.add_argument("--verbose", action="store_true",
                        help="a note per skipped resource instead of one summary line")
    args = parser.parse_args(argv)
    if not args.endpoint:
        # Real AWS is deployed with SAM/CloudFormation; never create stray resources there.
        parser.error("--endpoint (or AWS_ENDPOINT_URL) is required: this tool only targets emulators")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    params = {}
    for item in args.parameter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--parameter expects KEY=VALUE, got {item!r}")
        params[key] = value
    args.parameters = params
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        template = load_template(args.template)
        session = make_session(args.region)
        account = account_id(session, args.endpoint, args.region, args.timeout)
        stack = Stack(template, stack_name=args.stack_name, region=args.region,
                      account_id=account, parameters=args.parameters)
        note(f"provisioning stack {args.stack_name!r} from {args.template} on {args.endpoint} "
             f"({args.region}, account {account})")
        provisioner = Provisioner(session, args.endpoint, stack, args.timeout, verbose=args.verbose)
        counts = provisioner.run()
        outputs = provisioner.outputs()
        note(", ".join(f"{n} {k}" for k, n in counts.items()))
    except ProvisionError as exc:
        print(f"provision.py: error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"provision.py: error: {exc}", file=sys.stderr)
        return 1

    if args.format == "json":
        print(json.dumps(outputs, indent=2))
    else:
        for key, value in outputs.items():
            if "\n" in value:
                print(f"provision.py: error: output {key} spans lines; use --format json", file=sys.stderr)
                return 1
            print(f"{env_name(key)}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
