"""Offline checks of deploy/kubernetes as rendered by `kubectl kustomize` (tests/k8s/validate.sh).

1. Every built-in object against the official Kubernetes schemas (kubernetes-validate,
   strict: unknown fields are errors), for each Kubernetes version in K8S_VERSIONS.
2. The ExternalSecret against the external-secrets CRD's own schema (the validator
   @kubernetes-models/external-secrets generates from it; run by externalsecret.mjs).
3. What the refresher needs from each account's objects (issue 16 and the seed document):
   daily, Forbid, a starting deadline, retries, non-root with a read-only root, CODEX_HOME
   in an emptyDir, the projected service-account token, names and Vault keys per account.
4. That 1 and 2 can fail: a copy with a misspelt field and one with a bad enum are refused.

Usage: check_manifests.py RENDERED.yaml ACCOUNT... (the accounts the rendering must hold).
"""

import copy
import json
import os
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

K8S_VERSIONS = ["1.34", "1.37"]
HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def k8s_errors(doc):
    """Schema errors of one built-in object (empty when valid in every version)."""
    errs = []
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            errs.append(f"{v}: {e.message} at {'/'.join(str(p) for p in e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errs.append(f"{v}: no schema: {e}")
    return errs


def eso_errors(docs):
    """CRD-schema errors of ExternalSecrets: one line per document, "" when valid."""
    out = subprocess.run(
        ["node", os.path.join(HERE, "externalsecret.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": os.environ["ESO_MODELS"]},
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"externalsecret.mjs failed: {out.stderr}")
    return json.loads(out.stdout)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def check_account(docs, account):
    name = f"codex-auth-refresher-{account}"
    cj = by_kind(docs, "CronJob").get(name)
    if cj is None:
        return fail(f"no CronJob {name}")
    spec = cj["spec"]
    fields = spec["schedule"].split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit() and fields[2:] == ["*", "*", "*"]):
        fail(f"{name}: schedule {spec['schedule']!r} is not once a day")
    if spec.get("concurrencyPolicy") != "Forbid":
        fail(f"{name}: concurrencyPolicy must be Forbid")
    if not spec.get("startingDeadlineSeconds"):
        fail(f"{name}: startingDeadlineSeconds missing")
    job = spec["jobTemplate"]["spec"]
    if not isinstance(job.get("backoffLimit"), int):
        fail(f"{name}: backoffLimit missing")
    pod = job["template"]["spec"]
    if pod.get("serviceAccountName") != name:
        fail(f"{name}: serviceAccountName {pod.get('serviceAccountName')!r}")
    if name not in by_kind(docs, "ServiceAccount"):
        fail(f"{name}: no ServiceAccount {name}")
    psc = pod.get("securityContext", {})
    # 10001 is the image's user codex (deploy/container/build-image.sh), named by account.toml.
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
        fail(f"{name}: the pod must run as the image's non-root uid 10001")
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
        fail(f"{name}: readOnlyRootFilesystem true and allowPrivilegeEscalation false required")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail(f"{name}: capabilities must drop ALL")
    if c["args"][:3] != ["refresh", "--account", account]:
        fail(f"{name}: args {c['args']} do not refresh account {account}")
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    # The config the container reads: config.toml + config.d/50-account.toml of the ConfigMap.
    cm_name = vols[mounts["/etc/codex-auth-agent"]]["configMap"]["name"]
    cm = by_kind(docs, "ConfigMap").get(cm_name)
    if cm is None:
        return fail(f"{name}: ConfigMap {cm_name} is not in the rendering")
    config = tomllib.loads(cm["data"]["config.toml"])
    drop_in = tomllib.loads(cm["data"]["account.toml"])
    for section, values in drop_in.items():
        config.setdefault(section, {}).update(values)
    acct = config.get("accounts", {}).get(account)
    if acct is None or list(config["accounts"]) != [account]:
        return fail(f"{name}: the config must hold exactly the account {account}")
    if acct.get("fleet_role") != "refresher":
        fail(f"{name}: the account must be a fleet refresher")
    if config["vault"].get("auth") != "kubernetes" or config["vault"].get("kubernetes_role") != name:
        fail(f"{name}: [vault] must log in with auth = kubernetes and role {name}")
    places = [(acct["codex_home"], "codex_home"), (config["agent"]["state_dir"], "state_dir"), ("/tmp", "TMPDIR")]
    for key, what in places:
        mount = max((m for m in mounts if key == m or key.startswith(m + "/")), key=len, default=None)
        if mount is None or "emptyDir" not in vols[mounts[mount]]:
            fail(f"{name}: {what} {key} is not in an emptyDir")
    token = vols.get(mounts.get("/var/run/secrets/kubernetes.io/serviceaccount", ""), {})
    sources = token.get("projected", {}).get("sources", [])
    if not any(s.get("serviceAccountToken", {}).get("path") == "token" for s in sources):
        fail(f"{name}: no projected service-account token at the default token path")
    es_name = f"codex-auth-rotating-{account}"
    es = by_kind(docs, "ExternalSecret").get(es_name)
    if es is None:
        return fail(f"no ExternalSecret {es_name}")
    (d,) = es["spec"]["data"]
    ref = d["remoteRef"]
    want = (acct.get("vault_rotating_key") or f"codex-auth-json-b64-rotating-{account}", "value", "Base64")
    if (ref.get("key"), ref.get("property"), ref.get("decodingStrategy")) != want:
        fail(f"{es_name}: remoteRef {ref} does not read field `value` of {want[0]} as base64")
    if d["secretKey"] != "auth.json" or es["spec"].get("target", {}).get("name", es_name) != es_name:
        fail(f"{es_name}: must materialize Secret/{es_name} with the key auth.json")


def main():
    path, accounts = sys.argv[1], sys.argv[2:]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    builtin = [d for d in docs if d["kind"] != "ExternalSecret"]
    eso = [d for d in docs if d["kind"] == "ExternalSecret"]
    for d in builtin:
        for e in k8s_errors(d):
            fail(f"{d['kind']}/{d['metadata']['name']}: {e}")
    for d, e in zip(eso, eso_errors(eso)):
        if e:
            fail(f"ExternalSecret/{d['metadata']['name']}: {e}")
    for a in accounts:
        check_account(docs, a)
    print(f"{len(builtin)} built-in objects valid in Kubernetes {', '.join(K8S_VERSIONS)} (strict); "
          f"{len(eso)} ExternalSecret(s) valid against the external-secrets.io/v1 CRD schema")

    # The validators must be able to say no.
    cj = copy.deepcopy(next(d for d in builtin if d["kind"] == "CronJob"))
    cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    if not k8s_errors(cj):
        fail("a CronJob with a misspelt field (securityContex) passed the Kubernetes schema")
    bad = copy.deepcopy(eso[0]) if eso else None
    if bad is None:
        fail("no ExternalSecret to check")
    else:
        bad["spec"]["data"][0]["remoteRef"]["decodingStrategy"] = "base64"
        if not eso_errors([bad])[0]:
            fail("an ExternalSecret with decodingStrategy 'base64' passed the CRD schema")
    if failures:
        raise SystemExit(f"{len(failures)} manifest check(s) failed")
    print(f"manifests OK for account(s) {', '.join(accounts)}")


main()
