package notify

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv"
)

const (
	smtpUser     = "guard@example.com"
	smtpPassword = "s3cret-smtp-Pa55"
	mailFrom     = "astguard@example.com"
	mailTo       = "voip-admins@example.com"
)

// The SMTP server the package's tests share: testdata/smtpd.py, started
// once with a throwaway self-signed certificate, stopped by TestMain.
var smtpd struct {
	once     sync.Once
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	dir      string
	ca       string // the certificate's PEM file
	starttls string // host:port of each listener
	smtps    string
	plain    string
	err      error
}

// smtpServer starts the SMTP server at its first use.
func smtpServer(t *testing.T) {
	t.Helper()
	py := testenv.RequirePythonModule(t, "aiosmtpd", "python3-aiosmtpd")
	smtpd.once.Do(func() { smtpd.err = startSMTP(py) })
	if smtpd.err != nil {
		t.Fatal(smtpd.err)
	}
}

func startSMTP(py string) error {
	dir, err := os.MkdirTemp("", "astguard-smtpd-")
	if err != nil {
		return err
	}
	smtpd.dir = dir
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := selfSigned(cert, key); err != nil {
		return err
	}
	smtpd.ca = cert
	script, err := filepath.Abs("testdata/smtpd.py")
	if err != nil {
		return err
	}
	var lastErr error
	for range 3 { // a free port can be taken between the look and the start
		var ports [3]string
		for i := range ports {
			if ports[i], err = freePort(); err != nil {
				return err
			}
		}
		args := []string{script, filepath.Join(dir, "mail"), cert, key, smtpUser, smtpPassword}
		for _, p := range ports {
			_, port, _ := net.SplitHostPort(p)
			args = append(args, port)
		}
		cmd := exec.Command(py, args...)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		ready := make(chan bool, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			ready <- line == "ready\n"
		}()
		ok := false
		select {
		case ok = <-ready:
		case <-time.After(30 * time.Second):
		}
		if ok {
			smtpd.cmd, smtpd.stdin = cmd, stdin
			smtpd.starttls, smtpd.smtps, smtpd.plain = ports[0], ports[1], ports[2]
			return nil
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		lastErr = fmt.Errorf("smtpd.py did not start: %s", stderr.String())
	}
	return lastErr
}

func stopSMTP() {
	if smtpd.cmd != nil {
		_ = smtpd.stdin.Close() // it stops when its input closes
		done := make(chan struct{})
		go func() { _ = smtpd.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = smtpd.cmd.Process.Kill()
		}
	}
	if smtpd.dir != "" {
		_ = os.RemoveAll(smtpd.dir)
	}
}

// selfSigned writes a throwaway self-signed certificate for 127.0.0.1.
func selfSigned(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "astguard test SMTP"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// emailConfig is a [notify] table that mails through the listener at
// server with tlsMode, logging in with password unless tlsMode is none;
// instance marks the test's mails.
func emailConfig(server, tlsMode, password, instance string) config.Notify {
	c := testConfig()
	c.Instance = instance
	c.Webhook.URL = ""
	e := &c.Email
	e.Server, e.TLS, e.TLSCA, e.From, e.To = server, tlsMode, smtpd.ca, mailFrom, []string{mailTo}
	if tlsMode != config.EmailNoTLS {
		e.Username, e.Password = smtpUser, config.Secret(password)
	}
	e.RetryBackoff = config.Duration(time.Hour) // a retry would hold the test up: none is expected
	return c
}

// received is a mail the server took.
type received struct {
	raw      []byte
	msg      *mail.Message
	body     string // decoded
	envelope struct {
		From  string   `json:"from"`
		To    []string `json:"to"`
		Login *string  `json:"login"`
	}
}

// mails returns the mails the listener at server took whose subject holds
// marker.
func mails(t *testing.T, server, marker string) []received {
	t.Helper()
	_, port, _ := net.SplitHostPort(server)
	files, _ := filepath.Glob(filepath.Join(smtpd.dir, "mail", port, "*.eml"))
	var out []received
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !strings.Contains(m.Header.Get("Subject"), marker) {
			continue
		}
		r := received{raw: raw, msg: m}
		var body io.Reader = m.Body
		if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
			body = quotedprintable.NewReader(m.Body)
		}
		b, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		r.body = string(b)
		env, err := os.ReadFile(strings.TrimSuffix(f, ".eml") + ".json")
		if err != nil || json.Unmarshal(env, &r.envelope) != nil {
			t.Fatalf("%s: the envelope: %v", f, err)
		}
		out = append(out, r)
	}
	return out
}

// waitMail waits for the mail at server whose subject holds marker.
func waitMail(t *testing.T, server, marker string) received {
	t.Helper()
	var got []received
	testenv.WaitFor(t, "the mail "+marker, 30*time.Second, func() bool {
		got = mails(t, server, marker)
		return len(got) > 0
	})
	if len(got) != 1 {
		t.Fatalf("%d mails %q", len(got), marker)
	}
	return got[0]
}

// headerNames are the headers of a mail the guard sends.
var headerNames = []string{"Content-Transfer-Encoding", "Content-Type", "Date", "From", "Message-Id", "Mime-Version", "Subject", "To", "User-Agent", "X-Mailer"}

func checkHeaders(t *testing.T, r received) {
	t.Helper()
	var names []string
	for k := range r.msg.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	if !slices.Equal(names, headerNames) {
		t.Errorf("headers %v, want %v", names, headerNames)
	}
	if r.envelope.From != mailFrom || !slices.Equal(r.envelope.To, []string{mailTo}) || r.msg.Header.Get("To") != "<"+mailTo+">" {
		t.Errorf("envelope %+v, To %q", r.envelope, r.msg.Header.Get("To"))
	}
	if bytes.Contains(r.raw, []byte(smtpPassword)) {
		t.Error("the SMTP password is in the mail")
	}
}

// Over STARTTLS with a login: the incident's mails arrive with the
// expected subject and text, the new secret's file named and no secret in
// them; a dialled number with CR LF adds no header and no recipient.
func TestEmailSTARTTLS(t *testing.T) {
	t.Parallel()
	smtpServer(t)
	inst := fmt.Sprintf("starttls%d", time.Now().UnixNano()%1e9)
	f := start(t, emailConfig(smtpd.starttls, config.EmailSTARTTLS, smtpPassword, inst), policy.Enforce, nil)
	forged := "0044207946\r\nBcc: evil@example.com"
	id := f.alert("200", t0, forged, `00"44"2079`)

	opened := waitMail(t, smtpd.starttls, "incident "+id+" opened")
	want := "[astguard " + inst + "] incident " + id + " opened: SIP/200, call_rate critical"
	if got := opened.msg.Header.Get("Subject"); got != want {
		t.Errorf("subject %q, want %q", got, want)
	}
	checkHeaders(t, opened)
	if opened.envelope.Login == nil || *opened.envelope.Login != smtpUser {
		t.Errorf("login %v", opened.envelope.Login)
	}
	for _, s := range []string{"Extension:   SIP/200", "Sources:     203.0.113.9", `Dialled:     0044207946\r\nBcc: evil@example.com, 00"44"2079`} {
		if !strings.Contains(opened.body, s) {
			t.Errorf("the body lacks %q:\n%s", s, opened.body)
		}
	}
	if strings.Contains(opened.body, "\nBcc:") || bytes.Contains(opened.raw, []byte("\nBcc:")) {
		t.Errorf("the forged line is in the mail:\n%s", opened.raw)
	}

	rotated := waitMail(t, smtpd.starttls, "incident "+id+" updated: SIP/200, call_rate critical: rotate_secret done")
	checkHeaders(t, rotated)
	if !strings.Contains(rotated.body, "New secret:  in /var/lib/astguard/secrets.jsonl (the last line for SIP/200); it is never in a message") {
		t.Errorf("the rotation's mail does not say where the new secret is:\n%s", rotated.body)
	}
}

// A title with CR LF (a value an attacker shaped, should one ever reach
// it) stays one Subject line: no header, no recipient added.
func TestEmailSubjectInjection(t *testing.T) {
	t.Parallel()
	smtpServer(t)
	inst := fmt.Sprintf("inject%d", time.Now().UnixNano()%1e9)
	cfg := emailConfig(smtpd.plain, config.EmailNoTLS, "", inst)
	s, err := Senders(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := message.Sample()
	m.Instance, m.Title = inst, "0044\r\nBcc: evil@example.com\r\n\r\nforged body"
	if err := s[0].Send(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	r := waitMail(t, smtpd.plain, inst)
	checkHeaders(t, r)
	if got, want := r.msg.Header.Get("Subject"), `[astguard `+inst+`] 0044\r\nBcc: evil@example.com\r\n\r\nforged body`; got != want {
		t.Errorf("subject %q, want %q", got, want)
	}
}

// Implicit TLS (465) with a login.
func TestEmailImplicitTLS(t *testing.T) {
	t.Parallel()
	smtpServer(t)
	inst := fmt.Sprintf("smtps%d", time.Now().UnixNano()%1e9)
	n, err := New(Options{Config: emailConfig(smtpd.smtps, config.EmailTLS, smtpPassword, inst)})
	if err != nil {
		t.Fatal(err)
	}
	if res := n.Test(t.Context()); len(res) != 1 || res[0].Err != nil || res[0].Sender != nameEmail {
		t.Fatalf("Test: %+v", res)
	}
	r := waitMail(t, smtpd.smtps, "test: a sample notification of astguard on "+inst)
	checkHeaders(t, r)
	if r.envelope.Login == nil || *r.envelope.Login != smtpUser || !strings.Contains(r.body, "sample notification") {
		t.Errorf("login %v, body %s", r.envelope.Login, r.body)
	}
}

// A refused login is permanent: one attempt, no retry (its backoff is an
// hour), and the error says so without the password.
func TestEmailLoginRefused(t *testing.T) {
	t.Parallel()
	smtpServer(t)
	n, err := New(Options{Config: emailConfig(smtpd.starttls, config.EmailSTARTTLS, "wrong", "refused")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res := n.Test(ctx)
	if len(res) != 1 || res[0].Err == nil || !isPermanent(res[0].Err) || strings.Contains(res[0].Err.Error(), "wrong") {
		t.Fatalf("Test: %+v", res)
	}
	if s := n.Stats().Senders[0]; s.Failed != 1 || s.Sent != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// starttls never falls back to a connection in clear: a server without
// STARTTLS gets nothing.
func TestEmailSTARTTLSRequired(t *testing.T) {
	t.Parallel()
	smtpServer(t)
	cfg := emailConfig(smtpd.plain, config.EmailSTARTTLS, smtpPassword, "nostarttls")
	cfg.Email.Attempts = 1
	n, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	res := n.Test(t.Context())
	if len(res) != 1 || res[0].Err == nil {
		t.Fatalf("Test: %+v", res)
	}
	if got := mails(t, smtpd.plain, "nostarttls"); len(got) != 0 {
		t.Fatalf("%d mails went out in clear", len(got))
	}
}
