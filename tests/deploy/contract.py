#!/usr/bin/env python3
"""The deployment contract: `template.yaml`, translated by the SAM translator
(aws-sam-translator, offline) under sample parameters, checked against the
code, before anyone deploys.

1. **init** - every function's initialisation succeeds with the environment
   the template gives it: `paycache-dev init-check <function>` runs that
   function's own configuration loader and init (what its `main` builds
   before the first event) against the template's variables, with
   endpoints and secret ARNs replaced by local ones.
2. **iam** - every AWS operation the function's code can call (the list the
   code keeps next to each call: `paycache-dev aws-calls`) is allowed by the
   function's role in the translated template.
3. **reach** - every AWS service a function calls is reachable from its
   subnets: through an interface endpoint whose PrivateLink support covers
   that call in this configuration, or through the NAT of EgressSubnetIds
   (the documented facts are in REACH below, each with its source).
4. **names** - schedules, rules and queues carry no fixed name (a second
   stack in the account and region would collide); every dead-letter queue a
   rule or schedule sends to can receive (a queue policy, or the sender's
   role); every asynchronously invoked function has an EventInvokeConfig
   with an on-failure destination.
5. **security groups** - no function lists a security group twice.
6. **alarms** - every alarm action is a topic CloudWatch can publish to
   (unencrypted, or under a key of the stack that lets CloudWatch use it).
7. **existing endpoints** - with the VPC's own Secrets Manager and
   CloudWatch endpoints, every function is let into their security group.
8. **permissions** - every permission a route requires is obtainable by a
   client (its scope, accepted by the JWT authorizer) or a group the
   template creates.
9. **cors** - the HTTP API's CORS configuration allows what the code reads
   and exposes what it answers, for the CorsAllowedOrigin parameter, and
   lists exactly what the local front door answers (`paycache::http::CORS_*`).
10. **memory** - the functions of the power-tuning table take their group's
   MemorySize parameter.

Each check then runs against a deliberately broken template (BROKEN below:
an edit the check must catch) and must fail it.

Usage: contract.py (from the repository; make test runs it). Needs
aws-sam-translator, boto3 (a local moto_server at AWS_ENDPOINT_URL for the
secrets), and redis/PostgreSQL URLs for init: PAYCACHE_TEST_REDIS_URL,
PAYCACHE_TEST_PG. Prints one line per check and closes with
'deploy contract: N passed, M failed'."""
import copy
import json
import re
import logging
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402

logging.getLogger("samtranslator").setLevel(logging.ERROR)

REGION, ACCOUNT = "us-east-1", "123456789012"
SAMPLE = {
    "VpcId": "vpc-0123456789abcdef0",
    "PrivateSubnetIds": ["subnet-0000000000000000a", "subnet-0000000000000000b"],
    "EgressSubnetIds": ["subnet-1111111111111111a", "subnet-1111111111111111b"],
    "DatabaseUrl": "postgres://proxy.example:5432/payments?sslmode=verify-full",
    "DatabaseSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:db-AbCdEf",
    "DatabaseSecurityGroupId": "sg-0123456789abcdef0",
}

# Where each AWS service the functions call is reachable from, as AWS
# documents it. `endpoint`: the interface endpoint resource that serves it
# (its private DNS makes the SDK's default hostname resolve to it), and the
# condition under which it does; `nat`: reachable only through a NAT.
REACH = {
    # An interface endpoint serves Secrets Manager; the template creates one
    # unless the VPC already has one (CreateSecretsManagerEndpoint=false
    # means exactly that). https://docs.aws.amazon.com/secretsmanager/latest/userguide/vpc-endpoint-overview.html
    "secretsmanager": {"endpoint": "SecretsManagerEndpoint", "or_parameter": ("CreateSecretsManagerEndpoint", "false")},
    # CloudWatch (monitoring) likewise. https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/cloudwatch-and-interface-VPC.html
    "monitoring": {"endpoint": "CloudWatchEndpoint", "or_parameter": ("CreateCloudWatchEndpoint", "false")},
    # Cognito user pools through PrivateLink only when the pool has no
    # domain: "User pools with an assigned domain are incompatible with AWS
    # PrivateLink" (Access Amazon Cognito using an interface endpoint,
    # https://docs.aws.amazon.com/cognito/latest/developerguide/vpc-interface-endpoints.html).
    # The template's pool has a domain (the token endpoint): NAT.
    "cognito-idp": {"nat": True},
    # The API Gateway Management API has no interface endpoint serving
    # public APIs: an execute-api endpoint with private DNS routes only to
    # private APIs (403). https://repost.aws/knowledge-center/api-gateway-vpc-connections
    "execute-api": {"nat": True},
    # The issuer's JWKS (https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/jwks.json,
    # or an external issuer's): a public HTTPS URL.
    "jwks": {"nat": True},
}


class Steps:
    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}", flush=True)


class NoManagedPolicies:
    def load(self):
        return {}


def load_template():
    with open(os.path.join(ROOT, "template.yaml")) as f:
        return yaml_parse(f.read())


def translate(template, params=SAMPLE):
    t = copy.deepcopy(template)
    for r in t["Resources"].values():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = "s3://bucket/" + r["Properties"]["CodeUri"].replace("/", "-") + ".zip"
    out = transform(t, dict(params), NoManagedPolicies())
    return out


class Resolver:
    """Evaluates the translated template's intrinsic functions under the
    sample parameters: conditions decided, parameters and pseudo parameters
    substituted, other resources' refs and attributes left as placeholders."""

    def __init__(self, template, params):
        self.t = template
        self.params = {}
        for name, spec in template.get("Parameters", {}).items():
            self.params[name] = params.get(name, spec.get("Default"))
        self.pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                       "AWS::StackName": "paycache", "AWS::URLSuffix": "amazonaws.com",
                       "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/paycache/0b1c2d3e-aaaa-bbbb-cccc-0123456789ab",
                       "AWS::NoValue": None}
        self.cache = {}

    def condition(self, name):
        if name not in self.cache:
            self.cache[name] = bool(self.value(self.t["Conditions"][name]))
        return self.cache[name]

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        return f"<{name}>"

    def value(self, v):
        if isinstance(v, list):
            return [x for x in (self.value(i) for i in v) if x is not None]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Condition":
                return self.condition(a)
            if k == "Fn::If":
                return self.value(a[1] if self.condition(a[0]) else a[2])
            if k == "Fn::Equals":
                return str(self.value(a[0])) == str(self.value(a[1]))
            if k == "Fn::Not":
                return not self.value(a[0])
            if k == "Fn::And":
                return all(self.value(x) for x in a)
            if k == "Fn::Or":
                return any(self.value(x) for x in a)
            if k == "Fn::GetAtt":
                parts = a if isinstance(a, list) else a.split(".", 1)
                return f"<{parts[0]}.{parts[1]}>"
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self.value(a[1]))
            if k == "Fn::Split":
                return str(self.value(a[1])).split(a[0])
            if k == "Fn::Select":
                return self.value(a[1])[int(a[0])]
            if k == "Fn::Sub":
                text, extra = (a, {}) if isinstance(a, str) else (a[0], self.value(a[1]))
                import re

                def sub(m):
                    name = m.group(1)
                    if name in extra:
                        return str(extra[name])
                    if "." in name:
                        return f"<{name}>"
                    return str(self.ref(name))
                return re.sub(r"\$\{([^}!]+)\}", sub, text)
        return {k: self.value(x) for k, x in v.items()}


def functions(translated):
    return {k: r for k, r in translated["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}


def code_name(fn):
    """The function's crate (its `paycache-dev init-check` name): from the
    CodeUri the translation was given (s3://bucket/functions-<name>.zip)."""
    key = fn["Properties"]["Code"]["S3Key"]
    return key.removeprefix("functions-").removesuffix(".zip")


def dev(*args, env=None):
    return subprocess.run(["cargo", "run", "--quiet", "-p", "paycache-dev", "--", *args],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


def local_secrets():
    """Local copies of the two secrets (moto_server), standing in for the
    template's ARNs."""
    import boto3
    sm = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=REGION)
    suffix = os.urandom(4).hex()
    redis = sm.create_secret(Name=f"contract-{suffix}/redis", SecretString=json.dumps({"token": "contract-redis-token-0123456789"}))
    db = sm.create_secret(Name=f"contract-{suffix}/db", SecretString=json.dumps({"username": "postgres", "password": "contract-db-password"}))
    return redis["ARN"], db["ARN"]


def init_env(env, secrets):
    """The template's variables with endpoints and ARNs made local."""
    redis_arn, db_arn = secrets
    local = dict(env)
    pg = os.environ["PAYCACHE_TEST_PG"]
    parts = dict(p.split("=", 1) for p in pg.split())
    redis_url = os.environ["PAYCACHE_TEST_REDIS_URL"]
    for k, v in env.items():
        if not isinstance(v, str):
            continue
        if k == "REDIS_URL" or k == "REDIS_DURABLE_URL":
            local[k] = redis_url
        elif k == "REDIS_MODE" or k == "REDIS_DURABLE_MODE":
            local[k] = "standalone"
        elif k.endswith("AUTH_TOKEN_SECRET_ARN"):
            local[k] = redis_arn
        elif k == "DATABASE_SECRET_ARN":
            local[k] = db_arn
        elif k == "DATABASE_URL":
            # The template's form (sslmode=verify-full), pointed at the local
            # server: init parses it and builds the pool without connecting.
            local[k] = v.replace("proxy.example:5432", f"{parts['host']}:{parts['port']}")
        elif "<" in v or "amazonaws.com" in v:
            # Another resource's address or an AWS endpoint: a local stand-in
            # of the same shape.
            local[k] = v.replace("<", "x").replace(">", "x").replace(".", "-") if "://" not in v else "https://127.0.0.1:9/" + k.lower()
    return local


def check_init(step, translated, secrets, label="", expect_fail_for=None):
    r = Resolver(translated, SAMPLE)
    failures = []
    for name, fn in functions(translated).items():
        env = r.value(fn["Properties"].get("Environment", {}).get("Variables", {}))
        env = {k: ("" if v is None else str(v)) for k, v in env.items()}
        local = init_env(env, secrets)
        run_env = {k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "CARGO", "RUSTUP", "AWS_", "LANG"))}
        run_env.update(local)
        run_env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
        out = dev("init-check", code_name(fn), env=run_env)
        if out.returncode != 0:
            failures.append(f"{name}: {out.stderr.strip()[-300:]}")
    return failures


def role_statements(translated, fn, resolver):
    role = fn["Properties"]["Role"]
    role_id = role["Fn::GetAtt"][0] if isinstance(role, dict) and "Fn::GetAtt" in role else None
    statements = []
    if not role_id:
        return statements
    props = translated["Resources"][role_id]["Properties"]
    for p in resolver.value(props.get("Policies", [])):
        statements.extend(p["PolicyDocument"]["Statement"])
    for arn in props.get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and "Ref" in arn and arn["Ref"] in translated["Resources"]:
            mp = translated["Resources"][arn["Ref"]]
            if mp["Type"] == "AWS::IAM::ManagedPolicy":
                statements.extend(mp["Properties"]["PolicyDocument"]["Statement"])
    return statements


def allows(statements, action, resource_suffix, resolver):
    for st in statements:
        if st.get("Effect") != "Allow":
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if not any(a == action or a == action.split(":")[0] + ":*" or a == "*" for a in actions):
            continue
        if resource_suffix is None:
            return True
        resources = st.get("Resource", [])
        resources = resources if isinstance(resources, list) else [resources]
        for res in resources:
            text = str(resolver.value(res))
            if text == "*" or text.endswith(resource_suffix):
                return True
    return False


def check_iam(translated, calls):
    r = Resolver(translated, SAMPLE)
    missing = []
    for name, fn in functions(translated).items():
        crate = code_name(fn)
        env = r.value(fn["Properties"].get("Environment", {}).get("Variables", {}))
        for call in calls:
            if crate not in call["functions"]:
                continue
            if call.get("when_env") and not env.get(call["when_env"]):
                continue
            if call["action"] is None:
                continue
            for suffix in call.get("resources") or [None]:
                if not allows(role_statements(translated, fn, r), call["action"], suffix, r):
                    missing.append(f"{name} ({crate}): {call['action']} {suffix or ''} ({call['site']})")
    return missing


def check_reach(translated, calls):
    r = Resolver(translated, SAMPLE)
    private, egress = set(SAMPLE["PrivateSubnetIds"]), set(SAMPLE["EgressSubnetIds"])
    unreachable = []
    for name, fn in functions(translated).items():
        crate = code_name(fn)
        env = r.value(fn["Properties"].get("Environment", {}).get("Variables", {}))
        value = r.value(fn["Properties"].get("VpcConfig", {}).get("SubnetIds", [])) or []
        subnets = set(value.split(",") if isinstance(value, str) else value) - {""}
        has_nat = bool(subnets) and subnets <= egress
        for call in calls:
            if crate not in call["functions"]:
                continue
            if call.get("when_env") and not env.get(call["when_env"]):
                continue
            fact = REACH[call["service"]]
            if fact.get("nat"):
                ok = has_nat
            else:
                ep = translated["Resources"].get(fact["endpoint"])
                param, value = fact["or_parameter"]
                created = ep is not None and (ep.get("Condition") is None or r.condition(ep["Condition"]))
                private_dns = created and r.value(ep["Properties"].get("PrivateDnsEnabled"))
                ok = bool(private_dns) or r.params.get(param) == value or has_nat
            if not ok:
                where = "egress (NAT)" if has_nat else ("private" if subnets <= private else subnets)
                unreachable.append(f"{name} ({crate}) -> {call['service']} from {where} ({call['site']})")
    return unreachable


def check_names(translated):
    problems = []
    res = translated["Resources"]
    r = Resolver(translated, SAMPLE)
    for k, v in res.items():
        props = v.get("Properties", {})
        if v["Type"] == "AWS::Scheduler::Schedule" and "Name" in props and "AWS::StackName" not in json.dumps(props["Name"]):
            problems.append(f"{k}: a fixed schedule name ({props['Name']})")
        if v["Type"] == "AWS::Events::Rule" and "Name" in props and "AWS::StackName" not in json.dumps(props["Name"]):
            problems.append(f"{k}: a fixed rule name")
        if v["Type"] == "AWS::SQS::Queue" and "QueueName" in props:
            problems.append(f"{k}: a fixed queue name")
    # Dead-letter queues a rule sends to need a queue policy for
    # events.amazonaws.com; a schedule's, its role's sqs:SendMessage.
    policies = [v for v in res.values() if v["Type"] == "AWS::SQS::QueuePolicy"]
    def queue_of(arn):
        return arn["Fn::GetAtt"][0] if isinstance(arn, dict) and "Fn::GetAtt" in arn else None
    for k, v in res.items():
        if v["Type"] == "AWS::Events::Rule":
            for t in v["Properties"].get("Targets", []):
                q = queue_of(t.get("DeadLetterConfig", {}).get("Arn"))
                if q and not any(q in json.dumps(p["Properties"].get("Queues")) and "events.amazonaws.com" in json.dumps(p) for p in policies):
                    problems.append(f"{k}: its dead-letter queue {q} has no policy letting EventBridge send to it")
        if v["Type"] == "AWS::Scheduler::Schedule":
            t = v["Properties"]["Target"]
            q = queue_of(t.get("DeadLetterConfig", {}).get("Arn"))
            role = queue_of(t.get("RoleArn"))
            if q and not (role and q in json.dumps(res[role]) and "sqs:SendMessage" in json.dumps(res[role])):
                problems.append(f"{k}: its role cannot send to its dead-letter queue {q}")
    # Every asynchronously invoked function: an EventInvokeConfig with an
    # on-failure destination.
    async_fns = set()
    for v in res.values():
        if v["Type"] == "AWS::Scheduler::Schedule":
            async_fns.add(queue_of(v["Properties"]["Target"]["Arn"]))
        if v["Type"] == "AWS::Events::Rule":
            for t in v["Properties"].get("Targets", []):
                async_fns.add(queue_of(t["Arn"]))
    for fn in sorted(x for x in async_fns if x):
        configs = [v for v in res.values() if v["Type"] == "AWS::Lambda::EventInvokeConfig"
                   and v["Properties"]["FunctionName"] == {"Ref": fn}]
        if not configs or "OnFailure" not in json.dumps(configs[0]["Properties"].get("DestinationConfig", {})):
            problems.append(f"{fn}: invoked asynchronously without an EventInvokeConfig on-failure destination")
    return problems


def check_trust(translated):
    """Only their callers may invoke the functions: every resource policy
    (AWS::Lambda::Permission) names a service principal and the source it
    acts for (SourceArn) - API Gateway's API, the user pool, the rule, the
    schedule's role. The HTTP functions trust API Gateway's claims because
    of this (docs/security.md)."""
    problems = []
    apis = [k for k, v in translated["Resources"].items()
            if v["Type"] in ("AWS::ApiGatewayV2::Api", "AWS::ApiGateway::RestApi")]
    for k, v in translated["Resources"].items():
        if v["Type"] != "AWS::Lambda::Permission":
            continue
        p = v["Properties"]
        if not str(p.get("Principal", "")).endswith(".amazonaws.com") or "SourceArn" not in p:
            problems.append(f"{k}: {p.get('Principal')} without a SourceArn")
        elif p["Principal"] == "apigateway.amazonaws.com":
            # Scoped to one of this stack's APIs (a Ref, GetAtt or ${Api}
            # of it), not to any API of the account.
            arn = json.dumps(p["SourceArn"])
            ours = [a for a in apis if re.search(rf"(?<![A-Za-z0-9]){re.escape(a)}(?![A-Za-z0-9])", arn)]
            if "execute-api" not in arn or not ours:
                problems.append(f"{k}: API Gateway permission not scoped to this stack's API: {arn}")
    return problems


def check_security_groups(translated):
    """No function lists a security group twice (SAM appends a function's
    VpcConfig lists to Globals': a group named in both appears twice)."""
    problems = []
    for k, fn in functions(translated).items():
        groups = fn["Properties"].get("VpcConfig", {}).get("SecurityGroupIds", [])
        seen = [json.dumps(g, sort_keys=True) for g in groups]
        if len(seen) != len(set(seen)):
            problems.append(f"{k}: a security group listed twice: {groups}")
    return problems


def check_alarm_actions(translated):
    """Every alarm action can receive: an SNS topic of the stack, either
    unencrypted or encrypted with a key of the stack whose policy lets
    CloudWatch use it (kms:GenerateDataKey* and kms:Decrypt for
    cloudwatch.amazonaws.com). An AWS managed key (alias/aws/sns) cannot
    be given that: "Enable compatibility between event sources from AWS
    services and encrypted topics",
    https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services"""
    problems = []
    res = translated["Resources"]
    for k, v in res.items():
        if v["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = v["Properties"]
        for action in props.get("AlarmActions", []) + props.get("OKActions", []) + props.get("InsufficientDataActions", []):
            topic = action.get("Ref") if isinstance(action, dict) else None
            if topic not in res or res[topic]["Type"] != "AWS::SNS::Topic":
                problems.append(f"{k}: an action that is not one of the stack's topics: {action}")
                continue
            key = res[topic]["Properties"].get("KmsMasterKeyId")
            if key is None:
                continue
            ref = key.get("Ref") if isinstance(key, dict) else None
            if ref not in res or res[ref]["Type"] != "AWS::KMS::Key":
                problems.append(f"{k}: its topic {topic} is encrypted with {key}, which CloudWatch may not use")
                continue
            grants = set()
            for st in res[ref]["Properties"].get("KeyPolicy", {}).get("Statement", []):
                principal = json.dumps(st.get("Principal", {}))
                if st.get("Effect") == "Allow" and "cloudwatch.amazonaws.com" in principal:
                    actions = st.get("Action", [])
                    grants.update([actions] if isinstance(actions, str) else actions)
            for needed in ("kms:GenerateDataKey*", "kms:Decrypt"):
                if needed not in grants and "kms:*" not in grants:
                    problems.append(f"{k}: its topic's key {ref} does not let CloudWatch {needed}")
    return sorted(set(problems))


def check_existing_endpoints(template):
    """A stack that uses the VPC's existing endpoints (Create...Endpoint=
    false: a second stack of this template, or endpoints the VPC had) lets
    its functions into their security group: an ingress rule on
    ExistingEndpointSecurityGroupId, HTTPS, from every function's group."""
    params = dict(SAMPLE, CreateSecretsManagerEndpoint="false", CreateCloudWatchEndpoint="false",
                  ExistingEndpointSecurityGroupId="sg-0existing00000000")
    translated = translate(template, params)
    r = Resolver(translated, params)
    admitted = set()
    for k, v in translated["Resources"].items():
        if v["Type"] != "AWS::EC2::SecurityGroupIngress":
            continue
        if "Condition" in v and not r.condition(v["Condition"]):
            continue
        p = v["Properties"]
        if r.value(p.get("GroupId")) == "sg-0existing00000000" and r.value(p.get("FromPort")) in (443, "443") \
                and r.value(p.get("ToPort")) in (443, "443"):
            admitted.add(json.dumps(p.get("SourceSecurityGroupId"), sort_keys=True))
    problems = []
    for k, fn in functions(translated).items():
        for g in fn["Properties"].get("VpcConfig", {}).get("SecurityGroupIds", []):
            if json.dumps(g, sort_keys=True) not in admitted:
                problems.append(f"{k}: its security group {g} is not let into the existing endpoints' group")
    return sorted(set(problems))


def check_permissions(translated, perms):
    """Every permission a route may require (`paycache-dev permissions`) is
    obtainable by some principal the template creates: a user pool client
    allowed the scope `paycache/<permission>` of the stack's resource
    server and accepted by the HTTP API's JWT authorizer (its audience), or
    a user pool group whose sessions the code grants it."""
    res = translated["Resources"]
    prefix = perms["scope_prefix"]
    declared = set()
    for v in res.values():
        if v["Type"] == "AWS::Cognito::UserPoolResourceServer":
            ident = v["Properties"]["Identifier"]
            declared.update(f"{ident}/{sc['ScopeName']}" for sc in v["Properties"].get("Scopes", []))
    api = json.dumps([v for v in res.values() if v["Type"] == "AWS::ApiGatewayV2::Api"])
    obtainable = {}
    for k, v in res.items():
        if v["Type"] == "AWS::Cognito::UserPoolClient":
            if json.dumps({"Ref": k}) not in api:
                continue  # its tokens are refused by the JWT authorizer
            for scope in v["Properties"].get("AllowedOAuthScopes", []):
                if scope.startswith(prefix) and scope in declared:
                    obtainable.setdefault(scope[len(prefix):], []).append(k)
        if v["Type"] == "AWS::Cognito::UserPoolGroup":
            for p in perms["groups"].get(v["Properties"].get("GroupName"), []):
                obtainable.setdefault(p, []).append(k)
    return [f"{p}: no client or group the template creates can obtain it"
            for p in perms["permissions"] if p not in obtainable]


def check_cors(translated, code, origin="http://localhost:3000"):
    """Browsers on another origin can call the HTTP API: its CORS
    configuration (SAM writes it into the API's OpenAPI body as
    x-amazon-apigateway-cors) allows the origin of the CorsAllowedOrigin
    parameter, every request header the API reads and every method its
    routes use, and exposes every response header a client needs — the
    code's lists (`paycache-dev permissions`)."""
    cors = None
    for v in translated["Resources"].values():
        if v["Type"] == "AWS::ApiGatewayV2::Api":
            body = v["Properties"].get("Body", {})
            if "x-amazon-apigateway-cors" in body:
                cors = body["x-amazon-apigateway-cors"]
    if cors is None:
        return ["the HTTP API has no CORS configuration: browsers on another origin cannot call it"]
    problems = []
    lower = lambda xs: {x.lower() for x in xs} if isinstance(xs, list) else set()
    for h in code["cors_request_headers"]:
        if h not in lower(cors.get("allowHeaders")) and "*" not in lower(cors.get("allowHeaders")):
            problems.append(f"the request header {h} is not allowed")
    for h in code["cors_exposed_headers"]:
        if h not in lower(cors.get("exposeHeaders")):
            problems.append(f"the response header {h} is not exposed")
    for m in code["cors_allowed_methods"]:
        if m.lower() not in lower(cors.get("allowMethods")) and "*" not in lower(cors.get("allowMethods")):
            problems.append(f"the method {m} is not allowed")
    # The local front door (`make run`) answers from the same lists: what
    # the template lists beyond them a browser could use deployed only.
    for key, listed in (("allowHeaders", code["cors_request_headers"]),
                        ("exposeHeaders", code["cors_exposed_headers"]),
                        ("allowMethods", code["cors_allowed_methods"])):
        extra = lower(cors.get(key)) - {x.lower() for x in listed}
        if extra:
            problems.append(f"{key} lists {sorted(extra)}, which the local stack does not (paycache::http::CORS_*)")
    if cors.get("maxAge") != code["cors_max_age_secs"]:
        problems.append(f"maxAge is {cors.get('maxAge')}, the local stack's {code['cors_max_age_secs']}")
    if cors.get("allowOrigins") != [origin]:
        problems.append(f"the allowed origins are not the CorsAllowedOrigin parameter ({origin}): {cors.get('allowOrigins')}")
    return problems


def check_delivery(template):
    """Real-time delivery: every function agrees on WS_PARTITIONS (a
    publisher and the sender that disagree put entries where no sender
    reads); the Senders parameter enables exactly that many ws-sender
    schedules, for each of its values."""
    problems = []
    for senders in ["1", "2", "3", "4"]:
        params = dict(SAMPLE, Senders=senders)
        translated = translate(template, params)
        r = Resolver(translated, params)
        parts = set()
        for k, fn in functions(translated).items():
            env = r.value(fn["Properties"].get("Environment", {}).get("Variables", {}))
            parts.add(str(env.get("WS_PARTITIONS")))
        if len(parts) != 1 or "None" in parts:
            problems.append(f"Senders={senders}: the functions' WS_PARTITIONS differ: {sorted(parts)}")
        sender = next(k for k, fn in functions(translated).items() if code_name(fn) == "ws-sender")
        enabled = 0
        for k, v in translated["Resources"].items():
            if v["Type"] == "AWS::Scheduler::Schedule" and sender in json.dumps(v["Properties"]["Target"]["Arn"]):
                if r.value(v["Properties"].get("State", "ENABLED")) == "ENABLED":
                    enabled += 1
        if enabled != int(senders):
            problems.append(f"Senders={senders}: {enabled} ws-sender schedules enabled")
    return problems


# The functions of the power-tuning table (make bench), by group: their
# memory is the group's parameter, chosen from it (docs/operations.md).
MEMORY_GROUPS = {
    "HttpMemorySize": ["profile-read", "balance-write", "rate-limit-check", "session-logout", "health-check"],
    "WebSocketMemorySize": ["authorizer", "ws-connections"],
}


def check_memory(template):
    """Every function of a measured group takes its memory from the group's
    parameter (a size chosen from the power-tuning table, not by hand)."""
    params = dict(SAMPLE, HttpMemorySize="1024", WebSocketMemorySize="512")
    translated = translate(template, params)
    r = Resolver(translated, params)
    problems = []
    for param, names in MEMORY_GROUPS.items():
        for k, fn in functions(translated).items():
            if code_name(fn) in names:
                got = str(r.value(fn["Properties"].get("MemorySize")))
                if got != params[param]:
                    problems.append(f"{code_name(fn)}: MemorySize {got}, not {param} ({params[param]})")
    return problems


def edit(template, path, value=None, delete=False):
    t = copy.deepcopy(template)
    node = t
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return t


def main():
    step = Steps()
    template = load_template()
    translated = translate(template)
    calls = json.loads(dev("aws-calls").stdout)
    step("the code lists its AWS calls", len(calls) >= 5, calls)
    step("every function of the template is known to init-check",
         all(dev("init-check", code_name(f), "--names-only").returncode == 0 for f in functions(translated).values()))

    secrets = local_secrets()
    failures = check_init(step, translated, secrets)
    step("init: every function initialises with the template's environment", not failures, failures)
    missing = check_iam(translated, calls)
    step("iam: every AWS operation the code calls is allowed by its function's role", not missing, missing)
    unreachable = check_reach(translated, calls)
    step("reach: every AWS service a function calls is reachable from its subnets", not unreachable, unreachable)
    problems = check_names(translated)
    step("names, dead-letter policies, on-failure destinations", not problems, problems)
    problems = check_trust(translated)
    step("trust: every function's resource policy names its caller's source (SourceArn)", not problems, problems)

    problems = check_delivery(template)
    step("delivery: one WS_PARTITIONS everywhere; Senders enables that many ws-sender schedules", not problems, problems)
    problems = check_security_groups(translated)
    step("security groups: no function lists one twice", not problems, problems)
    problems = check_memory(template)
    step("memory: the measured functions take their group's MemorySize parameter", not problems, problems)
    problems = check_alarm_actions(translated)
    step("alarms: every alarm action is a topic CloudWatch can publish to", not problems, problems)
    problems = check_existing_endpoints(template)
    step("existing endpoints: their security group lets every function in", not problems, problems)
    perms = json.loads(dev("permissions").stdout)
    step("the code lists its permissions", len(perms["permissions"]) >= 5, perms)
    problems = check_permissions(translated, perms)
    step("permissions: every one a route requires is obtainable by a client or group of the stack",
         not problems, problems)
    problems = check_cors(translated, perms)
    problems += check_cors(translate(template, dict(SAMPLE, CorsAllowedOrigin="https://app.example")),
                           perms, "https://app.example")
    step("cors: the HTTP API lets the allowed origin send what the API reads and read what it answers",
         not problems, problems)

    # Broken variants: each edit must be caught by the check it breaks.
    res = "Resources"
    broken_init = edit(template, [res, "AuthorizerFunction", "Properties", "Environment", "Variables"],
                       {"AUTH_ISSUER": "https://issuer.example", "AUTH_AUDIENCE": "web", "AUTH_JWKS": '{"keys": []}'})
    # Caught for what was broken: the authorizer alone fails, on its keys
    # (a check failing every function, or for another reason, would pass
    # a bare "something failed").
    failed = check_init(step, translate(broken_init), secrets)
    step("broken init (the authorizer with an empty JWKS, the first deploy's) is caught, for its keys alone",
         len(failed) == 1 and failed[0].startswith("AuthorizerFunction:") and "JWKS" in failed[0], failed)
    broken_iam = edit(template, [res, "WsSenderFunction", "Properties", "Policies"], [{"Ref": "ReadSecretsPolicy"}])
    step("broken iam (ws-sender without execute-api:ManageConnections) is caught",
         check_iam(translate(broken_iam), calls))
    no_delete = copy.deepcopy(template)
    st = no_delete[res]["WsSenderFunction"]["Properties"]["Policies"][1]["Statement"][0]
    st["Resource"] = st["Resource"][:1]
    step("broken iam (ws-sender may post but not close: DELETE @connections) is caught",
         check_iam(translate(no_delete), calls))
    broken_reach = edit(template, [res, "SessionLogoutFunction", "Properties", "VpcConfig", "SubnetIds"],
                        {"Ref": "PrivateSubnetIds"})
    step("broken reach (session-logout without NAT: Cognito with a domain is not served by PrivateLink) is caught",
         check_reach(translate(broken_reach), calls))
    sender_private = edit(template, [res, "WsSenderFunction", "Properties", "VpcConfig", "SubnetIds"],
                          {"Ref": "PrivateSubnetIds"})
    step("broken reach (ws-sender in the subnets without NAT) is caught",
         check_reach(translate(sender_private), calls))
    named = copy.deepcopy(template)
    del named[res]["AuditFlushFunction"]["Properties"]["Events"]["EveryMinute"]["Properties"]["OmitName"]
    step("broken names (a schedule named after its logical id) is caught", check_names(translate(named)))
    dlq = copy.deepcopy(template)
    dlq[res]["CacheInvalidatorFunction"]["Properties"]["Events"]["Invalidations"]["Properties"]["DeadLetterConfig"] = \
        {"Arn": {"Fn::GetAtt": ["InvalidationDeadLetters", "Arn"]}}
    step("broken dead letters (a rule's queue given by Arn: no policy) is caught", check_names(translate(dlq)))
    no_config = edit(template, [res, "CacheInvalidatorFunction", "Properties", "EventInvokeConfig"], delete=True)
    step("broken async (the invalidator without an EventInvokeConfig) is caught", check_names(translate(no_config)))

    own_partitions = edit(template, [res, "BalanceWriteFunction", "Properties", "Environment", "Variables", "WS_PARTITIONS"], "4")
    step("broken delivery (balance-write with its own WS_PARTITIONS) is caught", check_delivery(own_partitions))
    always_on = edit(template, [res, "WsSenderFunction", "Properties", "Events", "EveryMinute3", "Properties", "State"], delete=True)
    step("broken delivery (a sender schedule enabled whatever Senders says) is caught", check_delivery(always_on))

    open_ws = edit(template, [res, "WebSocketInvokesConnections", "Properties", "SourceArn"], delete=True)
    step("broken trust (a permission for API Gateway without SourceArn) is caught",
         check_trust(translate(open_ws)))
    any_api = edit(template, [res, "WebSocketInvokesConnections", "Properties", "SourceArn"],
                   {"Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:*/*"})
    step("broken trust (a permission for any API of the account) is caught",
         check_trust(translate(any_api)))

    twice = edit(template, [res, "AuthorizerFunction", "Properties", "VpcConfig", "SecurityGroupIds"],
                 [{"Ref": "FunctionSecurityGroup"}])
    step("broken security groups (the authorizer naming the Globals' group again) is caught",
         check_security_groups(translate(twice)))
    managed_key = edit(template, [res, "AlarmTopic", "Properties", "KmsMasterKeyId"], "alias/aws/sns")
    step("broken alarms (the topic under the AWS managed key alias/aws/sns) is caught",
         check_alarm_actions(translate(managed_key)))
    no_grant = copy.deepcopy(template)
    no_grant[res]["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"] = \
        no_grant[res]["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"][:1]
    step("broken alarms (the topic's key without CloudWatch in its policy) is caught",
         check_alarm_actions(translate(no_grant)))

    no_monitoring = edit(template, [res, "MonitoringClient"], delete=True)
    no_monitoring = json.loads(json.dumps(no_monitoring).replace(',${MonitoringClient}', '')
                               .replace(', {"Ref": "MonitoringClient"}', ''))
    failed = check_permissions(translate(no_monitoring), perms)
    step("broken permissions (no client may request health.read) is caught, for health.read alone",
         len(failed) == 1 and failed[0].startswith("health.read:"), failed)
    unheard = copy.deepcopy(template)
    auth = unheard[res]["HttpApi"]["Properties"]["Auth"]["Authorizers"]["JwtAuthorizer"]["JwtConfiguration"]
    auth["audience"]["Fn::If"][1] = [{"Ref": "WebClient"}, {"Ref": "LedgerClient"}]
    failed = check_permissions(translate(unheard), perms)
    step("broken permissions (the scoped clients outside the JWT authorizer's audience) is caught",
         sorted(f.split(":")[0] for f in failed) == ["health.read", "ratelimit.check"], failed)
    no_idem = copy.deepcopy(template)
    no_idem[res]["HttpApi"]["Properties"]["CorsConfiguration"]["AllowHeaders"] = ["authorization", "content-type"]
    failed = check_cors(translate(no_idem), perms)
    step("broken cors (Idempotency-Key not allowed) is caught, for that header alone",
         failed == ["the request header idempotency-key is not allowed"], failed)
    drift = copy.deepcopy(template)
    drift[res]["HttpApi"]["Properties"]["CorsConfiguration"]["AllowHeaders"].append("x-debug")
    drift[res]["HttpApi"]["Properties"]["CorsConfiguration"]["MaxAge"] = 300
    failed = check_cors(translate(drift), perms)
    step("broken cors (the template allowing a header and a max age the local stack does not) is caught, for both",
         len(failed) == 2 and "x-debug" in failed[0] and "maxAge" in failed[1], failed)
    fixed = edit(template, [res, "BalanceWriteFunction", "Properties", "MemorySize"], 256)
    failed = check_memory(fixed)
    step("broken memory (balance-write with a fixed MemorySize) is caught, for it alone",
         len(failed) == 1 and failed[0].startswith("balance-write:"), failed)
    no_cors = edit(template, [res, "HttpApi", "Properties", "CorsConfiguration"], delete=True)
    step("broken cors (no CORS configuration) is caught", check_cors(translate(no_cors), perms))
    no_ingress = edit(template, [res, "ExistingEndpointIngress"], delete=True)
    step("broken existing endpoints (no rule letting the functions into their group) is caught",
         check_existing_endpoints(no_ingress))

    print(f"deploy contract: {step.passed} passed, {step.failed} failed", flush=True)
    sys.exit(0 if step.failed == 0 else 1)


if __name__ == "__main__":
    main()
