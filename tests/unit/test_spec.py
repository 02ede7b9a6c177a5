"""The spec parser: the whole schema, defaults, env expansion, and located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shipit.errors import SpecError
from shipit.spec import DEFAULT_RELEASE_PATTERN, Spec, parse


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "svc" / "Dockerfile.prod").write_text("FROM scratch\n", encoding="utf-8")
    return tmp_path


def load(project: Path, text: str, env: dict[str, str] | None = None) -> Spec:
    return parse(textwrap.dedent(text), project / "shipit.yml", env or {})


def problems(project: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(project, text, env)
    return [f"{p.location.line}:{p.location.column}: {p.message}" for p in info.value.problems]


MINIMAL = """\
version: 1
registries: [ghcr.io/acme]
image: {name: app}
"""


def test_minimal_spec_uses_the_documented_defaults(project: Path) -> None:
    spec = load(project, MINIMAL)
    [image] = spec.images
    assert image.name == "app"
    assert image.context == project.resolve()
    assert image.dockerfile == "Dockerfile"
    assert image.release_pattern == DEFAULT_RELEASE_PATTERN
    assert image.default_tags
    assert [(r.type, r.pattern, r.event) for r in image.tags] == [
        ("semver", "{{version}}", None),
        ("semver", "{{major}}.{{minor}}", None),
        ("semver", "{{major}}", None),
        ("ref", None, "branch"),
        ("ref", None, "tag"),
        ("ref", None, "pr"),
        ("sha", None, None),
    ]
    assert image.flavor.latest == "auto"
    assert image.scan is None and image.sign is None
    assert (image.push.parallel, image.push.retries) == (4, 3)
    [registry] = image.registries
    assert (registry.host, registry.namespace, registry.url) == ("ghcr.io", "acme", "ghcr.io/acme")


def test_full_design_example_parses(project: Path) -> None:
    (project / "certs").mkdir()
    (project / "certs" / "ca.crt").write_text("cert", encoding="utf-8")
    spec = load(
        project,
        """\
        version: 1
        registries:
          - docker.io/myorg
          - url: ghcr.io/myorg
            username: ${GITHUB_ACTOR}
            password_env: GITHUB_TOKEN
          - url: localhost:5000
            insecure: true
            ca_file: certs/ca.crt
        images:
          - name: backend
            context: svc
            dockerfile: Dockerfile.prod
            target: runtime
            platform: linux/amd64
            build_args: {APP_VERSION: "{{ version }}"}
            labels: {org.example.team: payments}
            release: {tag_pattern: "backend/v(?P<version>.*)"}
            tags:
              - {type: semver, pattern: "{{major}}.{{minor}}.{{patch}}"}
              - {type: semver, pattern: "{{major}}.{{minor}}"}
              - {type: ref, event: branch}
              - {type: ref, event: pr}
              - {type: sha}
              - {type: raw, value: "{{ branch_slug }}-{{ date('%Y%m%d') }}", enable: "{{ is_default_branch }}"}
            flavor: {latest: auto}
        scan:
          fail_on: HIGH
          ignore_unfixed: true
          scanners: [vuln, secret]
          reports: {json: trivy.json, sarif: trivy.sarif, gitlab: gl-container-scanning-report.json}
        sign:
          key: env://COSIGN_PRIVATE_KEY
        push:
          parallel: 4
          retries: 3
        """,
        env={"GITHUB_ACTOR": "octocat"},
    )
    [image] = spec.images
    assert image.context == (project / "svc").resolve()
    assert image.dockerfile == "Dockerfile.prod"
    assert (image.target, image.build.platforms) == ("runtime", ("linux/amd64",))
    assert image.build_args == {"APP_VERSION": "{{ version }}"}
    assert image.labels == {"org.example.team": "payments"}
    assert image.release_pattern == "backend/v(?P<version>.*)"
    assert [r.url for r in image.registries] == [
        "docker.io/myorg",
        "ghcr.io/myorg",
        "localhost:5000",
    ]
    ghcr = image.registries[1]
    assert (ghcr.username, ghcr.password_env) == ("octocat", "GITHUB_TOKEN")
    local = image.registries[2]
    assert local.insecure and local.ca_file == (project / "certs" / "ca.crt").resolve()
    assert image.tags[5].enable == "{{ is_default_branch }}"
    assert image.tags[4].prefix == "sha-"
    assert image.tags[3].prefix == "pr-"
    assert image.scan is not None and image.scan.fail_on == "HIGH" and image.scan.ignore_unfixed
    assert image.scan.reports.sarif == (project / "trivy.sarif").resolve()
    assert image.sign is not None and image.sign.key == "env://COSIGN_PRIVATE_KEY"


def test_registry_short_forms_are_normalised(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: [MyOrg, docker.io/Team, "localhost:5000", ghcr.io/acme/platform/, 127.0.0.1:5001/x]
        image: {name: App/Web}
        """,
    )
    [image] = spec.images
    assert image.name == "app/web"
    assert [(r.host, r.namespace) for r in image.registries] == [
        ("docker.io", "myorg"),
        ("docker.io", "team"),
        ("localhost:5000", ""),
        ("ghcr.io", "acme/platform"),
        ("127.0.0.1:5001", "x"),
    ]
    assert image.registries[2].image("app/web") == "localhost:5000/app/web"
    assert image.registries[3].image("app/web") == "ghcr.io/acme/platform/app/web"


def test_top_level_sections_are_defaults_that_images_override(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: [ghcr.io/acme]
        tags: [{type: sha}]
        flavor: {prefix: "v-", latest: "false"}
        scan: {fail_on: CRITICAL, scanners: [secret]}
        sign: {key: env://KEY}
        push: {parallel: 2}
        images:
          - name: one
          - name: two
            registries: [quay.io/acme]
            tags: [{type: raw, value: x}]
            flavor: {suffix: "-s"}
            scan: {ignore_unfixed: true}
            push: {retries: 5}
          - name: three
            scan: false
            sign: false
        """,
    )
    one, two, three = spec.images
    assert [r.type for r in one.tags] == ["sha"] and not one.default_tags
    assert one.flavor.prefix == "v-" and one.flavor.latest == "false"
    assert (
        one.scan is not None and one.scan.fail_on == "CRITICAL" and one.scan.scanners == ("secret",)
    )
    assert (one.push.parallel, one.push.retries) == (2, 3)
    assert [r.url for r in two.registries] == ["quay.io/acme"]
    assert [r.type for r in two.tags] == ["raw"]
    assert (two.flavor.prefix, two.flavor.suffix, two.flavor.latest) == ("v-", "-s", "false")
    assert two.scan is not None and two.scan.fail_on == "CRITICAL" and two.scan.ignore_unfixed
    assert (two.push.parallel, two.push.retries) == (2, 5)
    assert three.scan is None and three.sign is None
    assert one.sign is not None and one.sign.key == "env://KEY"


def test_an_empty_scan_section_means_on_with_defaults(project: Path) -> None:
    spec = load(project, MINIMAL + "scan:\nsign: true\n")
    [image] = spec.images
    assert image.scan is not None and image.scan.fail_on == "HIGH"
    assert image.scan.scanners == ("vuln", "secret") and image.scan.timeout == 600
    assert image.sign is not None and image.sign.key is None and image.sign.format == "bundle"


def test_environment_variables_are_expanded_with_defaults(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        registries: ["${REGISTRY}/${NS:-acme}", "${EMPTY:-quay.io}/x"]
        image:
          name: app
          build_args: {PRICE: "$$5", GREETING: "${HELLO:-hi} there", EMPTY: "${EMPTY}"}
        """,
        env={"REGISTRY": "ghcr.io", "EMPTY": ""},
    )
    [image] = spec.images
    assert [r.url for r in image.registries] == ["ghcr.io/acme", "quay.io/x"]
    assert image.build_args == {"PRICE": "$5", "GREETING": "hi there", "EMPTY": ""}


def test_a_missing_variable_is_an_error_naming_it_and_its_line(project: Path) -> None:
    found = problems(
        project,
        """\
        version: 1
        registries:
          - url: ghcr.io/acme
            username: ${GITHUB_ACTOR}
            password_env: TOKEN
        image: {name: app}
        """,
    )
    assert found == [
        "4:15: environment variable GITHUB_ACTOR is not set (write ${GITHUB_ACTOR:-default} to give a default)"
    ]


def test_every_problem_is_reported_at_once_with_its_location(project: Path) -> None:
    found = problems(
        project,
        """\
        version: 1
        registires: [ghcr.io/acme]
        image:
          name: app
          contxt: .
          tags:
            - {type: semver, patern: "{{major}}"}
            - {type: sha, length: 2}
        scan: {fail_on: HIHG}
        push: {parallel: 0}
        """,
    )
    assert found == [
        "2:1: unknown key 'registires' in the spec (did you mean 'registries'?)",
        "4:3: no registries for this image: add `registries:`",
        "5:3: unknown key 'contxt' in an image (did you mean 'context'?)",
        "7:22: unknown key 'patern' in a 'semver' tag rule (did you mean 'pattern'?)",
        "8:27: length must be at least 4, not 2",
        "9:17: fail_on must be one of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL, never, not 'HIHG' (did you mean 'HIGH'?)",
        "10:18: parallel must be at least 1, not 0",
    ]


def test_yaml_syntax_errors_are_located(project: Path) -> None:
    found = problems(project, "version: 1\nimage: {name: app\nregistries: []\n")
    assert len(found) == 1
    assert found[0].startswith("3:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1:1: the spec is empty: it needs at least `version: 1` and an image"),
        ("- a\n- b\n", "1:1: the spec must be a mapping, not a list"),
        (
            "registries: [a.io/b]\nimage: {name: app}\n",
            "1:1: missing `version: 1` at the top of the spec",
        ),
        (
            "version: 2\nregistries: [a.io/b]\nimage: {name: app}\n",
            "1:10: spec version 2 is not supported; this shipit reads version 1",
        ),
        (
            "version: 1\nregistries: [a.io/b]\n",
            "1:1: the spec has no image: add `image:` or `images:`",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nimages: [{name: b}]\n",
            "4:9: use either `image:` (one image) or `images:` (a list), not both",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimages: [{name: a}, {name: A}]\n",
            "3:21: image name 'a' is used twice",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: 'my app'}\n",
            "3:15: 'my app' is not a valid image name: use lowercase letters, digits and"
            " separators (. _ -), with / between path components",
        ),
        (
            "version: 1\nregistries: [https://ghcr.io/acme]\nimage: {name: a}\n",
            "2:14: registry url 'https://ghcr.io/acme' has a scheme: write the host and namespace"
            " only (e.g. 'ghcr.io/acme'); use `insecure: true` for plain HTTP",
        ),
        (
            "version: 1\nregistries: [a.io/b, a.io/b]\nimage: {name: a}\n",
            "2:22: registry 'a.io/b' is listed twice",
        ),
        (
            "version: 1\nregistries: [{url: a.io/b, password_env: TOKEN}]\nimage: {name: a}\n",
            "2:14: `password_env` needs a `username` too",
        ),
        (
            "version: 1\nregistries: [{url: a.io/b, username: u, password_env: 'hunter2!'}]\nimage: {name: a}\n",
            "2:55: password_env names an environment variable (like REGISTRY_TOKEN); never write"
            " the secret itself in the spec",
        ),
        (
            "version: 1\nregistries: [{url: a.io/b, ca_file: nope.crt}]\nimage: {name: a}\n",
            "2:37: ca_file 'nope.crt' does not exist",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, context: nowhere}\n",
            "3:27: build context 'nowhere' does not exist",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, dockerfile: Nope}\n",
            "3:30: no Dockerfile at 'Nope' in context",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, release: {tag_pattern: '(x'}}\n",
            "3:41: tag_pattern is not a valid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, platform: amd64}\n",
            "3:28: platform 'amd64' must look like linux/amd64 or linux/arm64/v8",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{value: x}]}\n",
            "3:25: a tag rule needs a `type` (semver, pep440, ref, sha, schedule, edge, match, raw)",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: ref}]}\n",
            "3:25: a 'ref' tag rule needs `event: branch`, `event: tag` or `event: pr`",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: raw}]}\n",
            "3:25: a 'raw' tag rule needs a `value`",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: match, pattern: 'v(\\d)', group: 2}]}\n",
            "3:25: pattern has no group '2'",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: raw, value: '{{ verison }}'}]}\n",
            "3:44: value: unknown name 'verison' in template (did you mean 'version'?)",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: raw, value: '{{ version '}]}\n",
            "3:44: value: template syntax error: unexpected end of template",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, build_args: {A: '{{ sha_shrt }}'}}\n",
            "3:30: build arg 'A': unknown name 'sha_shrt' in template (did you mean 'sha_short'?)",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {scanners: [vuln, viruses]}\n",
            "4:18: unknown scanner 'viruses' (scanners: vuln, secret, misconfig, license)",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {timeout: soon}\n",
            "4:17: timeout 'soon' must be seconds or a duration like 10m or 1h30m",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {ignorefile: .ignore-me}\n",
            "4:20: ignorefile '.ignore-me' does not exist",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {key: 'gcs://bucket/key'}\n",
            "4:13: key 'gcs://bucket/key' has an unknown scheme; use a file, env://VAR, or one of"
            " awskms:, gcpkms:, azurekms:, hashivault:, k8s:",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {key: '-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----'}\n",
            "4:13: never write a private key in the spec: use env://VAR or a file",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {timeout: 0s}\n",
            "4:17: timeout must be at least 1s, not '0s'",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {timeout: later}\n",
            "4:17: timeout 'later' must be seconds or a duration like 10m or 1h30m",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {rekor_url: rekor.example.com}\n",
            "4:19: rekor_url 'rekor.example.com' must be an http:// or https:// URL",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {signing_config: none.json}\n",
            "4:24: signing_config 'none.json' does not exist",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {trusted_root: none.json}\n",
            "4:22: trusted_root 'none.json' does not exist",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a}\npush: {parallel: many}\n",
            "4:18: parallel must be a whole number, not 'many'",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, pull: sometimes}\n",
            "3:24: pull must be true or false, not 'sometimes'",
        ),
        (
            "version: 1\nregistries: [a.io/b]\nimage: {name: a, flavor: {prefix: '{{ brnch }}-'}}\n",
            "3:35: prefix: unknown name 'brnch' in template (did you mean 'branch'?)",
        ),
        (
            "version: 1\nversion: 1\nregistries: [a.io/b]\nimage: {name: a}\n",
            "2:1: duplicate key 'version' in the spec",
        ),
    ],
)
def test_each_kind_of_mistake_gets_a_located_message(
    project: Path, text: str, expected: str
) -> None:
    found = problems(project, text)
    assert any(p.startswith(expected) for p in found), found


def test_yaml_anchors_merge_keys_and_extension_keys_work(project: Path) -> None:
    spec = load(
        project,
        """\
        version: 1
        x-common: &common
          registries: [ghcr.io/acme]
          push: {parallel: 8}
        images:
          - <<: *common
            name: one
          - <<: *common
            name: two
            push: {parallel: 1}
        """,
    )
    one, two = spec.images
    assert one.push.parallel == 8 and two.push.parallel == 1
    assert [r.url for r in two.registries] == ["ghcr.io/acme"]


def test_durations_and_lists_accept_their_short_forms(project: Path) -> None:
    spec = load(
        project,
        MINIMAL
        + "scan: {timeout: 1h30m, scanners: secret, db_repository: mirror.local/trivy-db}\n",
    )
    [image] = spec.images
    assert image.scan is not None
    assert image.scan.timeout == 5400
    assert image.scan.scanners == ("secret",)
    assert image.scan.db_repository == ("mirror.local/trivy-db",)


def test_a_trivyignore_next_to_the_spec_is_used_by_default(project: Path) -> None:
    (project / ".trivyignore").write_text("CVE-2024-0001\n", encoding="utf-8")
    [image] = load(project, MINIMAL + "scan: {}\n").images
    assert image.scan is not None and image.scan.ignorefile == project / ".trivyignore"
    assert not image.scan.ignorefile_explicit


def test_empty_key_means_keyless_and_a_file_key_must_exist(project: Path) -> None:
    [image] = load(project, MINIMAL + "sign: {key: '${COSIGN_KEY:-}'}\n").images
    assert image.sign is not None and image.sign.key is None
    (project / "cosign.key").write_text("k", encoding="utf-8")
    [image] = load(project, MINIMAL + "sign: {key: cosign.key}\n").images
    assert image.sign is not None and image.sign.key == str((project / "cosign.key").resolve())
    [image] = load(project, MINIMAL + "sign: {key: 'awskms:///alias/release'}\n").images
    assert image.sign is not None and image.sign.key == "awskms:///alias/release"


def test_the_sigstore_services_and_the_cosign_timeout_are_read(project: Path) -> None:
    (project / "sigstore").mkdir()
    (project / "sigstore" / "signing-config.json").write_text("{}", encoding="utf-8")
    (project / "sigstore" / "trusted-root.json").write_text("{}", encoding="utf-8")
    [image] = load(project, MINIMAL + "sign: {key: env://K}\n").images
    assert image.sign is not None
    assert (image.sign.signing_config, image.sign.trusted_root, image.sign.rekor_url) == (
        None,
        None,
        None,
    )
    assert image.sign.timeout == 300
    text = (
        MINIMAL + "sign: {signing_config: sigstore/signing-config.json,"
        " trusted_root: sigstore/trusted-root.json, timeout: 2m30s}\n"
    )
    [image] = load(project, text).images
    assert image.sign is not None
    assert image.sign.signing_config == (project / "sigstore" / "signing-config.json").resolve()
    assert image.sign.trusted_root == (project / "sigstore" / "trusted-root.json").resolve()
    assert image.sign.timeout == 150
    [image] = load(
        project, MINIMAL + "sign: {rekor_url: 'https://rekor.internal/', timeout: 90}\n"
    ).images
    assert image.sign is not None
    assert (image.sign.rekor_url, image.sign.timeout) == ("https://rekor.internal", 90)


def test_a_signing_config_takes_no_rekor_url_and_no_legacy_format(project: Path) -> None:
    (project / "sc.json").write_text("{}", encoding="utf-8")
    found = problems(
        project,
        MINIMAL + "sign:\n  signing_config: sc.json\n  rekor_url: https://r.example\n",
    )
    assert found == [
        "6:14: rekor_url and signing_config do not go together: cosign takes every service"
        " URL from the signing config, so list the Rekor there (`cosign signing-config create`)"
    ]
    found = problems(
        project,
        "version: 1\nregistries: [a.io/b]\nsign: {format: legacy}\n"
        "images:\n  - {name: a, sign: {signing_config: sc.json}}\n",
    )
    assert found == [
        "5:38: signing_config needs `format: bundle`: cosign writes the services of a signing"
        " config only into Sigstore bundles"
    ]  # the format came from the top of the spec, the signing config from the image


def test_choices_are_case_insensitive_and_booleans_read_as_words(project: Path) -> None:
    [image] = load(project, MINIMAL + "flavor: {latest: false}\nscan: {fail_on: critical}\n").images
    assert image.flavor.latest == "false"
    assert image.scan is not None and image.scan.fail_on == "CRITICAL"


def test_problems_name_the_file(project: Path) -> None:
    with pytest.raises(SpecError) as info:
        load(project, "version: 1\n")
    assert str(info.value.problems[0].location).endswith("shipit.yml:1:1")
    assert "1 problem in the spec" in str(info.value)
