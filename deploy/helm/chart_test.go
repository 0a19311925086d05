//go:build integration

// Package helm_test renders the Helm chart with helm (built from the Go
// module proxy) and decodes every object strictly into its Kubernetes
// type: no cluster and no schema download needed.
package helm_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/smtpbridge/smtpbridge/internal/pki"
)

const helmModule = "helm.sh/helm/v3/cmd/helm@v3.22.0"

var (
	root  = filepath.Join("..", "..")
	chart = filepath.Join("smtpbridge")
)

// tools builds helm and smtpbridge once for the package's tests.
var tools = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "helmtest")
	if err != nil {
		return "", err
	}
	install := exec.Command("go", "install", helmModule)
	install.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	if out, err := install.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", helmModule, err, out)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "smtpbridge"), "./cmd/smtpbridge")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build smtpbridge: %v\n%s", err, out)
	}
	return dir, nil
})

func bin(t *testing.T, name string) string {
	t.Helper()
	dir, err := tools()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// helm runs helm with args; it fails the test unless wantErr.
func helm(t *testing.T, wantErr bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin(t, "helm"), args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if (err != nil) != wantErr {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String() + stderr.String()
}

// testHash is a device's own password hash (printf
// helm-test-device-password | smtpbridge hash-password), as a user would
// put in the values.
const testHash = "$argon2id$v=19$m=7168,t=5,p=1$wIXfWUD8F8PSzXP1IKJlVQ$K25TWnLBn2kyyZQ3uW3M5v4cl+3ZL0OhwQVyZtqesjo"

// The value sets the tests render: what a first install, a production
// install with everything on, and a single sandbox bridge set.
var valueSets = map[string]string{
	"defaults": `
secretEnv: {CONTOSO_SECRET: "s3cret"}
config:
  devices:
    - {name: mfp-2f, username: mfp-2f, password_hash: "` + testHash + `", tenant: contoso, mailbox: scanner@contoso.com}
`,
	"untouched": ``,
	"redis-tls": `
secretEnv: {CONTOSO_SECRET: "s3cret"}
config:
  devices:
    - {name: mfp-2f, username: mfp-2f, password_hash: "` + testHash + `", tenant: contoso, mailbox: scanner@contoso.com}
redis:
  auth: {existingSecret: my-redis-password}
  tls: {secretName: redis-tls}
networkPolicy:
  smtpFrom: ["10.20.0.0/16", "192.168.50.0/24"]
`,
	"production": `
replicaCount: 3
secretEnv: {CONTOSO_SECRET: "s3cret"}
tls: {secretName: smtpbridge-tls}
httpAuth: {secretName: smtpbridge-http}
serviceMonitor: {enabled: true}
prometheusRule: {enabled: true}
redis:
  enabled: false
  external:
    sentinelAddresses: ["sentinel-0:26379", "sentinel-1:26379"]
    masterName: mymaster
    passwordSecret: redis-password
    tls: true
service:
  ports:
    - {name: submission, port: 587, targetPort: 5870}
    - {name: legacy, port: 2525, targetPort: 2525}
config:
  hostname: smtpbridge.contoso.local
  listeners:
    - {name: submission, address: "0.0.0.0:5870", tls: starttls, cert_file: /etc/smtpbridge/tls/tls.crt, key_file: /etc/smtpbridge/tls/tls.key}
    - {name: legacy, address: "0.0.0.0:2525", tls: starttls, cert_file: /etc/smtpbridge/tls/tls.crt, key_file: /etc/smtpbridge/tls/tls.key, min_tls_version: "1.0", legacy_ciphers: true, allow_insecure_auth: true}
  tenants:
    - {name: contoso, tenant_id: contoso.onmicrosoft.com, client_id: 00000000-0000-0000-0000-000000000000, client_secret: "${CONTOSO_SECRET}"}
  devices:
    - {name: mfp-2f, username: mfp-2f, password_hash: "` + testHash + `", tenant: contoso, mailbox: scanner@contoso.com}
  limits: {max_message_bytes: 36700160, max_connections: 200}
  spool: {max_bytes: 1073741824}
`,
	"sandbox": `
replicaCount: 1
sandbox: true
redis: {enabled: false}
service: {type: ClusterIP, ports: [{name: lan, port: 2525, targetPort: 2525}]}
config:
  listeners:
    - {name: lan, address: "0.0.0.0:2525", tls: none, allow_insecure_auth: true}
  tenants:
    - {name: sandbox, tenant_id: sandbox.example, client_id: 00000000-0000-0000-0000-000000000001, client_secret: sandbox-client-secret}
  devices:
    - {name: mfp-sandbox, username: mfp-sandbox, password_hash: "$argon2id$v=19$m=7168,t=5,p=1$yApTCPw9fmA3WY9HgO+e5g$AVeYUj6c5M/zt46EsuRgKZfgOaMc/lUk19HBOIaAWBQ", tenant: sandbox, mailbox: scanner@sandbox.example}
`,
}

func valuesFile(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(p, []byte(valueSets[name]), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// objects are a rendering's objects, decoded strictly.
type objects struct {
	sts        []*appsv1.StatefulSet
	deploys    []*appsv1.Deployment
	services   map[string]*corev1.Service
	configMaps []*corev1.ConfigMap
	secrets    []*corev1.Secret
	pdbs       []*policyv1.PodDisruptionBudget
	accounts   []*corev1.ServiceAccount
	monitors   []*monitoringv1.ServiceMonitor
	rules      []*monitoringv1.PrometheusRule
	policies   map[string]*networkingv1.NetworkPolicy
}

// decodeStrict turns one YAML document into v, refusing duplicate keys
// and fields v's type lacks.
func decodeStrict(doc []byte, v any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func render(t *testing.T, set string) objects {
	t.Helper()
	out := helm(t, false, "template", "rel", chart, "-f", valuesFile(t, set))
	o := objects{services: map[string]*corev1.Service{}, policies: map[string]*networkingv1.NetworkPolicy{}}
	for _, doc := range strings.Split(out, "\n---\n") {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("%s: %v\n%s", set, err, doc)
		}
		if head.Kind == "" {
			continue // a comment-only document
		}
		var v any
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 StatefulSet":
			x := &appsv1.StatefulSet{}
			o.sts, v = append(o.sts, x), x
		case "apps/v1 Deployment":
			x := &appsv1.Deployment{}
			o.deploys, v = append(o.deploys, x), x
		case "v1 Service":
			v = &corev1.Service{}
		case "v1 ConfigMap":
			x := &corev1.ConfigMap{}
			o.configMaps, v = append(o.configMaps, x), x
		case "v1 Secret":
			x := &corev1.Secret{}
			o.secrets, v = append(o.secrets, x), x
		case "policy/v1 PodDisruptionBudget":
			x := &policyv1.PodDisruptionBudget{}
			o.pdbs, v = append(o.pdbs, x), x
		case "v1 ServiceAccount":
			x := &corev1.ServiceAccount{}
			o.accounts, v = append(o.accounts, x), x
		case "monitoring.coreos.com/v1 ServiceMonitor":
			x := &monitoringv1.ServiceMonitor{}
			o.monitors, v = append(o.monitors, x), x
		case "networking.k8s.io/v1 NetworkPolicy":
			v = &networkingv1.NetworkPolicy{}
		case "monitoring.coreos.com/v1 PrometheusRule":
			x := &monitoringv1.PrometheusRule{}
			o.rules, v = append(o.rules, x), x
		default:
			t.Fatalf("%s: an object of a kind the test does not know: %s %s", set, head.APIVersion, head.Kind)
		}
		if err := decodeStrict([]byte(doc), v); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly: %v\n%s", set, head.APIVersion, head.Kind, err, doc)
		}
		if s, ok := v.(*corev1.Service); ok {
			o.services[s.Name] = s
		}
		if p, ok := v.(*networkingv1.NetworkPolicy); ok {
			o.policies[p.Name] = p
		}
	}
	return o
}

func TestLint(t *testing.T) {
	for name := range valueSets {
		out := helm(t, false, "lint", chart, "--strict", "-f", valuesFile(t, name))
		if !strings.Contains(out, "0 chart(s) failed") {
			t.Errorf("helm lint with %s values:\n%s", name, out)
		}
	}
}

// The objects a production install renders, strictly typed, and what
// the issue asks of each.
func TestProduction(t *testing.T) {
	o := render(t, "production")
	if len(o.sts) != 1 || len(o.configMaps) != 1 || len(o.pdbs) != 1 || len(o.monitors) != 1 || len(o.rules) != 1 || len(o.deploys) != 0 {
		t.Fatalf("objects: %d StatefulSets, %d ConfigMaps, %d PDBs, %d ServiceMonitors, %d PrometheusRules, %d Deployments (an external Redis: none)",
			len(o.sts), len(o.configMaps), len(o.pdbs), len(o.monitors), len(o.rules), len(o.deploys))
	}
	sts := o.sts[0]
	if *sts.Spec.Replicas != 3 || len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != "spool" {
		t.Errorf("StatefulSet: replicas %d, claims %+v", *sts.Spec.Replicas, sts.Spec.VolumeClaimTemplates)
	}
	if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("a scaled-down replica's claim is not kept: %+v", p)
	}
	pod := sts.Spec.Template.Spec
	c := pod.Containers[0]
	sc := c.SecurityContext
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 {
		t.Errorf("security context: pod %+v, container %+v", pod.SecurityContext, sc)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probes: readiness %s, liveness %s", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Error("no memory limit")
	}
	pre := strings.Join(c.Lifecycle.PreStop.Exec.Command, " ")
	if !strings.Contains(pre, "smtpbridge drain --config /etc/smtpbridge/smtpbridge.yaml --timeout 240s") || *pod.TerminationGracePeriodSeconds != 300 {
		t.Errorf("preStop %q with terminationGracePeriodSeconds %d: the drain must end within the grace period", pre, *pod.TerminationGracePeriodSeconds)
	}
	svc := o.services["rel-smtpbridge"]
	if svc == nil || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || len(svc.Spec.Ports) != 2 {
		t.Fatalf("the SMTP Service: %+v", svc)
	}
	ports := map[string]bool{}
	for _, p := range c.Ports {
		ports[p.Name] = true
	}
	for _, p := range svc.Spec.Ports {
		if !ports[p.TargetPort.StrVal] {
			t.Errorf("Service port %s targets %q, which the container does not name", p.Name, p.TargetPort.StrVal)
		}
	}
	// The alert rules are the shipped ones.
	want, err := os.ReadFile(filepath.Join(root, "examples", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(chart, "files", "alerts.yml")); !bytes.Equal(got, want) {
		t.Error("deploy/helm/smtpbridge/files/alerts.yml differs from examples/prometheus/alerts.yml: copy it again")
	}
	var shipped monitoringv1.PrometheusRuleSpec
	if err := decodeStrict(want, &shipped); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(shipped, o.rules[0].Spec) || len(shipped.Groups) == 0 {
		t.Error("the PrometheusRule's rules are not the shipped alerts.yml")
	}
	if m := o.monitors[0]; m.Spec.JobLabel != "app.kubernetes.io/name" || m.Spec.Endpoints[0].BasicAuth == nil {
		t.Errorf("ServiceMonitor: job label %q (the alerts want job=\"smtpbridge\"), basic auth %v", m.Spec.JobLabel, m.Spec.Endpoints[0].BasicAuth)
	}

	// The config the chart writes is one the bridge takes.
	cfg := o.configMaps[0].Data["smtpbridge.yaml"]
	for _, want := range []string{"sentinel_addresses:", "master_name: mymaster", "password_file: /etc/smtpbridge/redis/password", "tls: true", "address: 0.0.0.0:9464"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	checkConfig(t, cfg, true)
}

// A first install: the release's own Redis, two replicas, a PDB; the
// Redis asks for a password the chart made, in a Secret the bridge reads
// too, and admits the bridge's pods only.
func TestDefaults(t *testing.T) {
	o := render(t, "defaults")
	if len(o.sts) != 1 || *o.sts[0].Spec.Replicas != 2 || len(o.deploys) != 1 || o.services["rel-smtpbridge-redis"] == nil || len(o.pdbs) != 1 {
		t.Fatalf("defaults: %d StatefulSets, %d Deployments (Redis), services %v, %d PDBs", len(o.sts), len(o.deploys), o.services, len(o.pdbs))
	}
	cfg := o.configMaps[0].Data["smtpbridge.yaml"]
	if !strings.Contains(cfg, "address: rel-smtpbridge-redis:6379") || !strings.Contains(cfg, "password_file: /etc/smtpbridge/redis/password") {
		t.Errorf("config does not point at the release's Redis with its password:\n%s", cfg)
	}
	secrets := map[string]*corev1.Secret{}
	for _, s := range o.secrets {
		secrets[s.Name] = s
	}
	if s := secrets["rel-smtpbridge"]; s == nil || s.StringData["CONTOSO_SECRET"] != "s3cret" {
		t.Errorf("secrets: %+v", o.secrets)
	}
	pw := secrets["rel-smtpbridge-redis"]
	if pw == nil || len(pw.Data["password"]) < 32 {
		t.Fatalf("no generated Redis password: %+v", pw)
	}
	redis := o.deploys[0].Spec.Template.Spec
	r := redis.Containers[0]
	if r.SecurityContext.ReadOnlyRootFilesystem == nil || !*r.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the Redis container's root filesystem is writable")
	}
	script := strings.Join(append(r.Command, r.Args...), " ")
	if !strings.Contains(script, "requirepass") || !strings.Contains(script, "/etc/redis/auth/password") || strings.Contains(script, string(pw.Data["password"])) {
		t.Errorf("Redis does not take its password from the Secret's file:\n%s", script)
	}
	if !mountsSecret(redis, "/etc/redis/auth", "rel-smtpbridge-redis") || !mountsSecret(o.sts[0].Spec.Template.Spec, "/etc/smtpbridge/redis", "rel-smtpbridge-redis") {
		t.Error("Redis or the bridge does not mount the Redis password Secret")
	}
	// Redis admits the bridge's pods only, on its port.
	np := o.policies["rel-smtpbridge-redis"]
	if np == nil || np.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] != "redis" || len(np.Spec.Ingress) != 1 ||
		len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector.MatchLabels["app.kubernetes.io/component"] != "bridge" ||
		np.Spec.Ingress[0].Ports[0].Port.IntValue() != 6379 {
		t.Errorf("Redis's NetworkPolicy: %+v", np)
	}
	if !selects(np.Spec.Ingress[0].From[0].PodSelector.MatchLabels, o.sts[0].Spec.Template.Labels) ||
		selects(np.Spec.Ingress[0].From[0].PodSelector.MatchLabels, o.deploys[0].Spec.Template.Labels) {
		t.Error("the NetworkPolicy's peers are not exactly the bridge's pods")
	}
	if len(o.policies) != 1 {
		t.Errorf("%d NetworkPolicies by default, want Redis's only", len(o.policies))
	}
	// The devices' Service, the replicas' Service and the PDB pick the
	// bridge's pods, never the Redis pod.
	for _, sel := range []map[string]string{o.services["rel-smtpbridge"].Spec.Selector, o.services["rel-smtpbridge-headless"].Spec.Selector, o.pdbs[0].Spec.Selector.MatchLabels} {
		if !selects(sel, o.sts[0].Spec.Template.Labels) || selects(sel, o.deploys[0].Spec.Template.Labels) {
			t.Errorf("selector %v picks the Redis pod, or not the bridge's", sel)
		}
	}
	checkConfig(t, cfg, true)
}

// The release's Redis with a password of the admin's and TLS, and the
// SMTP ports kept to the devices' networks.
func TestRedisTLS(t *testing.T) {
	o := render(t, "redis-tls")
	for _, s := range o.secrets {
		if s.Name == "rel-smtpbridge-redis" {
			t.Error("the chart made a Redis password beside the admin's Secret")
		}
	}
	redis := o.deploys[0].Spec.Template.Spec
	script := strings.Join(redis.Containers[0].Args, " ")
	for _, want := range []string{"--port 0 --tls-port 6379", "--tls-cert-file /etc/redis/tls/tls.crt", "--tls-auth-clients no"} {
		if !strings.Contains(script, want) {
			t.Errorf("Redis's command lacks %q:\n%s", want, script)
		}
	}
	if !mountsSecret(redis, "/etc/redis/auth", "my-redis-password") || !mountsSecret(redis, "/etc/redis/tls", "redis-tls") ||
		!mountsSecret(o.sts[0].Spec.Template.Spec, "/etc/smtpbridge/redis", "my-redis-password") ||
		!mountsSecret(o.sts[0].Spec.Template.Spec, "/etc/smtpbridge/redis-tls", "redis-tls") {
		t.Error("the password or TLS Secrets are not mounted where the config says")
	}
	cfg := o.configMaps[0].Data["smtpbridge.yaml"]
	for _, want := range []string{"tls: true", "ca_file: /etc/smtpbridge/redis-tls/ca.crt", "password_file: /etc/smtpbridge/redis/password"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	np := o.policies["rel-smtpbridge"]
	if np == nil || len(np.Spec.Ingress) != 2 || len(np.Spec.Ingress[0].From) != 2 || np.Spec.Ingress[0].From[0].IPBlock.CIDR != "10.20.0.0/16" ||
		np.Spec.Ingress[0].Ports[0].Port.IntValue() != 5870 || np.Spec.Ingress[1].Ports[0].Port.IntValue() != 9464 {
		t.Errorf("the bridge's NetworkPolicy: %+v", np)
	}
	checkConfig(t, cfg, true)
}

// mountsSecret says whether pod mounts a volume of Secret name at path.
func mountsSecret(pod corev1.PodSpec, path, name string) bool {
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if m.MountPath != path {
				continue
			}
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == name {
					return true
				}
			}
		}
	}
	return false
}

// selects says whether a label selector picks a pod with these labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// The chart's own values, untouched: the bridge would not start (the
// device's password is a placeholder), and check-config says what to do.
func TestUntouchedValuesRefused(t *testing.T) {
	o := render(t, "untouched")
	out, err := checkConfigOutput(t, o.configMaps[0].Data["smtpbridge.yaml"], true)
	if err == nil || !strings.Contains(out, "devices[0].password_hash: still the example's placeholder") || !strings.Contains(out, "smtpbridge hash-password") {
		t.Errorf("check-config on the chart's untouched values: %v\n%s", err, out)
	}
}

// One sandbox bridge: no Redis, no PDB; its config passes check-config.
func TestSandbox(t *testing.T) {
	o := render(t, "sandbox")
	if len(o.deploys) != 0 || len(o.pdbs) != 0 || len(o.secrets) != 0 {
		t.Errorf("sandbox: %d Deployments, %d PDBs, %d Secrets", len(o.deploys), len(o.pdbs), len(o.secrets))
	}
	cfg := o.configMaps[0].Data["smtpbridge.yaml"]
	if strings.Contains(cfg, "cluster:") || !strings.Contains(cfg, "sandbox:") {
		t.Errorf("sandbox config:\n%s", cfg)
	}
	checkConfig(t, cfg, false)
}

// Several replicas without Redis would each take Exchange's limits for
// themselves: the chart refuses, and says why.
func TestReplicasNeedRedis(t *testing.T) {
	out := helm(t, true, "template", "rel", chart, "--set", "redis.enabled=false", "--set", "replicaCount=2")
	if !strings.Contains(out, "replicaCount above 1 needs shared limits") {
		t.Errorf("helm template with 2 replicas and no Redis:\n%s", out)
	}
}

// checkConfig runs smtpbridge check-config on a rendered config, its
// paths moved to a temporary directory with the files they name, and
// fails the test if it refuses it.
func checkConfig(t *testing.T, cfg string, withTLS bool) {
	t.Helper()
	out, err := checkConfigOutput(t, cfg, withTLS)
	if err != nil {
		t.Errorf("smtpbridge check-config on the chart's config: %v\n%s\n%s", err, out, cfg)
	}
	t.Logf("check-config: %s", bytes.TrimSpace([]byte(out)))
}

// checkConfigOutput runs smtpbridge check-config on a rendered config.
func checkConfigOutput(t *testing.T, cfg string, withTLS bool) (string, error) {
	t.Helper()
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	for _, d := range []string{"tls", "http", "redis", "redis-tls"} {
		if err := os.MkdirAll(filepath.Join(etc, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if withTLS {
		ca, err := pki.NewCA("test CA")
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := ca.Issue("smtpbridge.contoso.local")
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(etc, "tls", "tls.crt"), leaf.CertPEM, 0o600)
		os.WriteFile(filepath.Join(etc, "tls", "tls.key"), leaf.KeyPEM, 0o600)
	}
	os.WriteFile(filepath.Join(etc, "http", "password"), []byte("scrape-password\n"), 0o600)
	os.WriteFile(filepath.Join(etc, "redis", "password"), []byte("redis-password\n"), 0o600)
	redisCA, err := pki.NewCA("redis CA")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(etc, "redis-tls", "ca.crt"), redisCA.CertPEM(), 0o600)
	cfg = strings.ReplaceAll(cfg, "/etc/smtpbridge", etc)
	cfg = strings.ReplaceAll(cfg, "/var/lib/smtpbridge", filepath.Join(dir, "var"))
	path := filepath.Join(dir, "smtpbridge.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin(t, "smtpbridge"), "check-config", "--config", path)
	cmd.Env = append(os.Environ(), "CONTOSO_SECRET=s3cret")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The release's Redis's start script, as the chart renders it, run here
// with redis-server: without the password Redis answers nothing but
// NOAUTH; with it, it works. The password is in no command line.
func TestRedisScriptAsksForThePassword(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed: .ci/run installs it")
	}
	o := render(t, "defaults")
	c := o.deploys[0].Spec.Template.Spec.Containers[0]
	dir := t.TempDir()
	const password = "Zx9Qp2Lm7Rt4Vb8Nc3Hd6Jf1Kg5Ws0Ye"
	os.WriteFile(filepath.Join(dir, "password"), []byte(password), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	script := strings.NewReplacer("/etc/redis/auth/password", filepath.Join(dir, "password"), "/data/", dir+"/").Replace(c.Args[0])
	script = strings.Replace(script, "--maxmemory-policy noeviction", fmt.Sprintf("--maxmemory-policy noeviction --port %d --bind 127.0.0.1", port), 1)
	cmd := exec.Command(c.Command[0], append(c.Command[1:], script)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var conn net.Conn
	for i := 0; ; i++ {
		if conn, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("redis did not start: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	ask := func(cmd string) string {
		fmt.Fprintf(conn, "%s\r\n", cmd)
		line, _ := r.ReadString('\n')
		return strings.TrimSpace(line)
	}
	if got := ask("SET smtpbridge:fail:10.0.0.1 0"); !strings.HasPrefix(got, "-NOAUTH") {
		t.Errorf("without the password: %q, want NOAUTH", got)
	}
	if got := ask("AUTH " + password); got != "+OK" {
		t.Errorf("AUTH with the password: %q", got)
	}
	if got := ask("PING"); got != "+PONG" {
		t.Errorf("after AUTH: %q", got)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
	if strings.Contains(string(cmdline), password) {
		t.Error("the password is on redis-server's command line")
	}
}
