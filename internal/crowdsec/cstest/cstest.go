// Package cstest runs a real CrowdSec Local API (LAPI) for tests: the
// crowdsec binary of Debian's crowdsec package, started from a throwaway
// configuration in a temporary directory, listening on a free port of
// 127.0.0.1, with its SQLite database in that directory, without the
// agent (-no-cs) and without the Central API (-no-capi). Machines and
// bouncers are registered with cscli against that configuration.
//
// A package's tests share one LAPI (Shared), started at the first test
// that needs it; its TestMain stops it (StopShared) after the run.
package cstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/testenv"
)

// LAPI is a running CrowdSec Local API.
type LAPI struct {
	// Dir holds its configuration, database and log.
	Dir string
	// URL is its base URL, e.g. http://127.0.0.1:41234/.
	URL string
	// Addr is its host:port.
	Addr string

	config string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *lockedBuffer
	dbMu   sync.Mutex // one cscli at a time: they write the database directly
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// configTemplate is the throwaway configuration: Debian's
// /etc/crowdsec/config.yaml with every path in the directory, the log on
// stdout, no Prometheus endpoint, no Central API (no online_client).
const configTemplate = `common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {{DIR}}
config_paths:
  config_dir: {{DIR}}
  data_dir: {{DIR}}/data
  simulation_path: {{DIR}}/simulation.yaml
  hub_dir: {{DIR}}/hub
  index_path: {{DIR}}/hub/.index.json
  notification_dir: {{DIR}}/notifications
  plugin_dir: {{DIR}}/plugins
db_config:
  log_level: info
  type: sqlite
  db_path: {{DIR}}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {{DIR}}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: {{ADDR}}
    profiles_path: {{DIR}}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: false
`

// profiles are the LAPI's profiles: an alert without decisions of its own
// gets a 4h ban of its source, as Debian's default profile does.
const profiles = `name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
`

// Start starts a LAPI and waits until it listens.
func Start() (*LAPI, error) {
	dir, err := os.MkdirTemp("", "astguard-lapi-")
	if err != nil {
		return nil, err
	}
	l, err := startIn(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return l, nil
}

func startIn(dir string) (*LAPI, error) {
	for _, d := range []string{"data", "hub", "notifications", "plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := strings.NewReplacer("{{DIR}}", dir, "{{ADDR}}", addr).Replace(configTemplate)
	l := &LAPI{Dir: dir, URL: "http://" + addr + "/", Addr: addr, config: filepath.Join(dir, "config.yaml"),
		exited: make(chan struct{}), out: &lockedBuffer{}}
	for name, content := range map[string]string{
		"config.yaml": cfg, "profiles.yaml": profiles, "simulation.yaml": "simulation: false\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	l.cmd = exec.Command("crowdsec", "-c", l.config, "-no-cs", "-no-capi")
	l.cmd.Dir = dir
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the test binary
	if err := l.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start crowdsec: %w", err)
	}
	go func() {
		_ = l.cmd.Wait()
		close(l.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			// cscli's own machine, for the commands that go through the
			// API (alerts list).
			if _, err := l.Cscli("machines", "add", "cstest", "--password", "pw-"+randomHex(12), "-f", filepath.Join(dir, "local_api_credentials.yaml")); err != nil {
				l.Stop()
				return nil, err
			}
			return l, nil
		}
		select {
		case <-l.exited:
			return nil, fmt.Errorf("crowdsec exited before it listened on %s:\n%s", addr, l.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.Stop()
			return nil, fmt.Errorf("crowdsec did not listen on %s within 30s:\n%s", addr, l.out.String())
		}
	}
}

// freePort returns a 127.0.0.1 address no one listens on now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Stop stops the LAPI (SIGTERM, then SIGKILL after 10s) and removes its
// directory.
func (l *LAPI) Stop() error {
	if l.cmd.Process != nil {
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-l.exited:
		case <-time.After(10 * time.Second):
			_ = l.cmd.Process.Kill()
			<-l.exited
		}
	}
	return os.RemoveAll(l.Dir)
}

// Log is what the LAPI printed so far.
func (l *LAPI) Log() string { return l.out.String() }

// Cscli runs cscli against the LAPI's configuration, retrying while the
// database is busy.
func (l *LAPI) Cscli(args ...string) ([]byte, error) {
	l.dbMu.Lock()
	defer l.dbMu.Unlock()
	var out []byte
	var err error
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "cscli", append([]string{"-c", l.config}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run()
		cancel()
		out = stdout.Bytes()
		if err == nil {
			return out, nil
		}
		err = fmt.Errorf("cscli %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		if !strings.Contains(stderr.String(), "locked") && !strings.Contains(stderr.String(), "busy") {
			break
		}
		time.Sleep(100 * time.Millisecond) // the database is busy: try again
	}
	return out, err
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// AddMachine registers a machine (watcher) named name and returns its
// password.
func (l *LAPI) AddMachine(name string) (string, error) {
	pw := "pw-" + randomHex(12)
	_, err := l.Cscli("machines", "add", name, "--password", pw, "-f", filepath.Join(l.Dir, "machine-"+name+".yaml"))
	return pw, err
}

// AddBouncer registers a bouncer named name and returns its API key.
func (l *LAPI) AddBouncer(name string) (string, error) {
	key := "key" + randomHex(16)
	_, err := l.Cscli("bouncers", "add", name, "--key", key)
	return key, err
}

// Decision is a decision as `cscli decisions list -o json` shows it.
type Decision struct {
	ID       int64  `json:"id"`
	Origin   string `json:"origin"`
	Scenario string `json:"scenario"`
	Scope    string `json:"scope"`
	Value    string `json:"value"`
	Type     string `json:"type"`
	Duration string `json:"duration"`
	// Simulated decisions are listed too.
	Simulated bool `json:"simulated"`
	// MachineID is the machine whose alert holds the decision.
	MachineID string `json:"-"`
}

// Decisions lists the active decisions of the LAPI, of every origin
// (cscli shows only those of crowdsec and cscli without --all) and the
// simulated ones included, through cscli.
func (l *LAPI) Decisions() ([]Decision, error) {
	out, err := l.Cscli("alerts", "list", "--all", "-o", "json", "--limit", "0")
	if err != nil {
		return nil, err
	}
	var alerts []struct {
		MachineID string     `json:"machine_id"`
		Simulated bool       `json:"simulated"`
		Decisions []Decision `json:"decisions"`
	}
	if s := strings.TrimSpace(string(out)); s == "" || s == "null" {
		return nil, nil
	}
	if err := json.Unmarshal(out, &alerts); err != nil {
		return nil, fmt.Errorf("cscli alerts list: %w\n%s", err, out)
	}
	var ds []Decision
	for _, a := range alerts {
		for _, d := range a.Decisions {
			d.Simulated = d.Simulated || a.Simulated
			d.MachineID = a.MachineID
			ds = append(ds, d)
		}
	}
	return ds, nil
}

var (
	sharedOnce sync.Once
	shared     *LAPI
	sharedErr  error
)

// Shared returns the package's LAPI, starting it at the first call. It
// skips t (fails it under ASTGUARD_TEST_STRICT=1) when crowdsec or cscli
// is not installed, and fails t when the LAPI does not start.
func Shared(t testing.TB) *LAPI {
	t.Helper()
	RequireCrowdSec(t)
	sharedOnce.Do(func() { shared, sharedErr = Start() })
	if sharedErr != nil {
		t.Fatalf("CrowdSec Local API: %v", sharedErr)
	}
	return shared
}

// RequireCrowdSec skips t (fails it when strict) unless crowdsec and
// cscli are installed.
func RequireCrowdSec(t testing.TB) {
	t.Helper()
	testenv.RequireCommand(t, "crowdsec", "cscli")
}

// StopShared stops the package's LAPI if a test started it. Call it from
// TestMain after m.Run.
func StopShared() error {
	if shared == nil {
		return nil
	}
	err := shared.Stop()
	shared = nil
	return err
}

// Name returns a machine or bouncer name unique in the LAPI: prefix and
// random hex.
func Name(prefix string) string { return prefix + "-" + randomHex(4) }

// Proxy stands between a client and a server (the LAPI) and can cut it
// off: while down, it closes every connection, new and open, as a server
// that is gone does.
type Proxy struct {
	ln     net.Listener
	target string
	down   atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

// StartProxy starts a Proxy to target (host:port) on a free port of
// 127.0.0.1; it stops at t's cleanup.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.SetDown(true)
	})
	return p
}

// URL is the proxy's base URL.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() + "/" }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = true, true
		p.mu.Unlock()
		go func() { _, _ = io.Copy(u, c); u.Close() }()
		go func() { _, _ = io.Copy(c, u); c.Close() }()
	}
}

// SetDown cuts the proxy off (down) or puts it back.
func (p *Proxy) SetDown(down bool) {
	p.down.Store(down)
	if !down {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}
