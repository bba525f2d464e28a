package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/ami/client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingDial counts connection attempts.
type countingDial struct{ n atomic.Int64 }

func (d *countingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// Each way the link fails is logged once, at error, with its cause, however
// often the client retries, and shows in the typed status; when it ends,
// the login says so at info.
func TestLinkFailuresAreLoud(t *testing.T) {
	freePort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T) (addr string, fix func())
		auth    client.Auth
		problem client.Problem
		msg     string
		field   string // the log field with the cause
		cause   string // in the cause
	}{
		{"wrong secret", func(t *testing.T) (string, func()) {
			srv := startServer(t, amitest.Options{Secret: "other"})
			return srv.Addr(), nil
		}, client.AuthMD5, client.ProblemLoginRefused,
			"AMI login refused: check ami.username, the secret and the user's permit/deny in manager.conf", "asterisk_message", "Authentication failed"},
		{"wrong secret, plain", func(t *testing.T) (string, func()) {
			srv := startServer(t, amitest.Options{Secret: "other"})
			return srv.Addr(), nil
		}, client.AuthPlain, client.ProblemLoginRefused,
			"AMI login refused: check ami.username, the secret and the user's permit/deny in manager.conf", "asterisk_message", "Authentication failed"},
		{"nothing listening", func(t *testing.T) (string, func()) {
			return freePort(), nil
		}, client.AuthMD5, client.ProblemUnreachable, "AMI unreachable: the guard sees nothing until it connects", "error", "connection refused"},
		{"no banner", func(t *testing.T) (string, func()) {
			srv := startServer(t, amitest.Options{})
			srv.WithholdBanner(true)
			return srv.Addr(), func() { srv.WithholdBanner(false) }
		}, client.AuthMD5, client.ProblemNoBanner, "AMI sent no banner: the guard sees nothing until it connects", "error", "no banner within"},
		{"not AMI", func(t *testing.T) (string, func()) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
					c.Close()
				}
			}()
			return ln.Addr().String(), nil
		}, client.AuthMD5, client.ProblemNoBanner, "AMI sent no banner: the guard sees nothing until it connects", "error", "not an AMI banner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, fix := tc.setup(t)
			var d countingDial
			c, logs := newClient(t, addr, client.Options{Events: "off", Auth: tc.auth, Dial: d.dial,
				HandshakeTimeout: 300 * time.Millisecond, ReconnectInterval: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
			waitFor(t, "the "+tc.problem.String()+" line", func() bool { return len(logs.lines(tc.msg)) > 0 })
			// Retries do not repeat it.
			waitFor(t, "three more attempts", func() bool { return d.n.Load() >= 4 })
			lines := logs.lines(tc.msg)
			if len(lines) != 1 {
				t.Fatalf("%d lines %q, want 1", len(lines), tc.msg)
			}
			l := lines[0]
			if l["level"] != "error" || l["address"] != addr || l["problem"] != tc.problem.String() ||
				!strings.Contains(l[tc.field].(string), tc.cause) {
				t.Errorf("line %v", l)
			}
			st := c.Status()
			if st.State != client.StateDown || st.Problem != tc.problem || !strings.Contains(st.Detail, tc.cause) || c.Connected() {
				t.Errorf("status %+v", st)
			}
			if _, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err == nil {
				t.Error("an action succeeded while down")
			}
			if fix == nil {
				return
			}
			fix()
			waitFor(t, "the login", c.Connected)
			up := logs.lines("AMI session logged in")
			if len(up) != 1 || up[0]["level"] != "info" || up[0]["after"] != tc.problem.String() {
				t.Errorf("login lines %v", up)
			}
		})
	}
}

// An Asterisk that goes away (connection refused) and comes back: the
// client backs off, logs in again, and says once that it lost the link and
// once that it got it back.
func TestAsteriskRestart(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	var d countingDial
	logins := make(chan struct{}, 8)
	c, logs := newClient(t, srv.Addr(), client.Options{Events: "off", Dial: d.dial, OnConnect: func(string) { logins <- struct{}{} },
		ReconnectInterval: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	<-logins
	srv.Down()
	waitFor(t, "refused attempts", func() bool {
		return c.Status().Problem == client.ProblemUnreachable && d.n.Load() >= 4
	})
	if err := srv.Up(); err != nil {
		t.Fatal(err)
	}
	<-logins
	if st := c.Status(); st.State != client.StateUp || st.Connects != 2 {
		t.Errorf("status %+v", st)
	}
	lost, unreachable := logs.lines("AMI connection lost: the guard is blind until it reconnects"), logs.lines("AMI unreachable: the guard sees nothing until it connects")
	if len(lost) != 1 || len(unreachable) != 1 {
		t.Errorf("%d lost and %d unreachable lines, want one each", len(lost), len(unreachable))
	}
}

// certs returns a CA and a server certificate for 127.0.0.1 it signed.
func certs(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test AMI CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pbx"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"pbx.example.net"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// AMI over TLS: a server whose certificate chains to the given CA is
// accepted (by address, or by a configured name); one that does not, or
// one for another name, is refused as a TLS problem.
func TestTLS(t *testing.T) {
	pool, cert := certs(t)
	srv := startServer(t, amitest.Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	addr := "tls://" + srv.Addr()

	c, _ := newClient(t, addr, client.Options{Events: "off", TLS: &tls.Config{RootCAs: pool}})
	waitFor(t, "the login over TLS", c.Connected)
	if resp, err := c.Do(ctx(t), ami.Action{Name: "Ping"}); err != nil || !resp.OK() {
		t.Errorf("Ping over TLS: %v, %v", resp, err)
	}
	named, _ := newClient(t, addr, client.Options{Events: "off", TLS: &tls.Config{RootCAs: pool, ServerName: "pbx.example.net"}})
	waitFor(t, "the login with a server name", named.Connected)

	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"system CAs", nil},
		{"another name", &tls.Config{RootCAs: pool, ServerName: "other.example.net"}},
	} {
		bad, logs := newClient(t, addr, client.Options{Events: "off", TLS: tc.cfg})
		const msg = "AMI TLS handshake failed: the guard sees nothing until it connects"
		// The status changes before the line is logged: wait for both.
		waitFor(t, tc.name+": the TLS failure", func() bool {
			return bad.Status().Problem == client.ProblemTLS && len(logs.lines(msg)) > 0
		})
		if l := logs.lines(msg); len(l) != 1 ||
			!strings.Contains(l[0]["error"].(string), "certificate") {
			t.Errorf("%s: lines %v", tc.name, l)
		}
	}
}

// Close leaves no goroutine behind, whatever the client was doing: logged
// in, retrying, or waiting for a banner.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	srv := startServer(t, amitest.Options{})
	accepted := make(chan struct{}, 1)
	silent := startServer(t, amitest.Options{Logf: func(format string, _ ...any) {
		if strings.Contains(format, "connected from") {
			accepted <- struct{}{}
		}
	}})
	silent.WithholdBanner(true)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, tc := range []struct {
		addr    string
		waitFor func(c *client.Client)
	}{
		{srv.Addr(), func(c *client.Client) { waitFor(t, "the login", c.Connected) }},
		{silent.Addr(), func(*client.Client) { <-accepted }}, // waiting for the banner
		{"127.0.0.1:1", func(c *client.Client) {
			waitFor(t, "a refused attempt", func() bool { return c.Status().Problem == client.ProblemUnreachable })
		}},
	} {
		c, err := client.New(client.Options{Address: tc.addr, Username: "guard", Secret: "guardpass", Events: "off",
			ReconnectInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		tc.waitFor(c)
		c.Close()
	}
}
