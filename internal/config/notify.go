package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/astguard/astguard/internal/notify/message"
)

// Notify is the [notify] table: who is told of the incidents and of the
// guard's own trouble, and how. Each sender is off until its address is
// set.
type Notify struct {
	// Instance names the guard in every message; empty: the host name.
	Instance string `toml:"instance"`
	// QueueSize bounds the events waiting for the notifier, and the
	// messages waiting for each sender: what does not fit is dropped and
	// counted, never waited for.
	QueueSize int `toml:"queue_size"`
	// BatchDelay: the updates of one incident that come within this time
	// of its first one go out as one message.
	BatchDelay Duration `toml:"batch_delay"`
	// DigestThreshold: when more incidents than this open within
	// DigestWindow, the next ones (and every later update of them) go out
	// as one digest per DigestWindow. 0: never.
	DigestThreshold int      `toml:"digest_threshold"`
	DigestWindow    Duration `toml:"digest_window"`
	// TroubleAfter: an AMI session down (or its login refused), or the
	// firewall failing, for this long is notified.
	TroubleAfter Duration     `toml:"trouble_after"`
	Webhook      Webhook      `toml:"webhook"`
	Alertmanager Alertmanager `toml:"alertmanager"`
	Email        Email        `toml:"email"`
}

// Webhook is [notify.webhook]: an HTTP POST of each message.
type Webhook struct {
	// URL is where to POST (http or https); empty: off.
	URL         string `toml:"url"`
	MinSeverity string `toml:"min_severity"`
	// Timeout bounds one attempt; Attempts is how many are made (a
	// network error, a 5xx or 429 answer is tried again after
	// RetryBackoff, doubled each time).
	Timeout      Duration `toml:"timeout"`
	Attempts     int      `toml:"attempts"`
	RetryBackoff Duration `toml:"retry_backoff"`
	// HMACKey signs each body (HMAC-SHA256, in SignatureHeader as
	// "sha256=" and the hex digest). Load replaces it with the value of
	// HMACKeyEnv or the first line of HMACKeyFile when those are set.
	HMACKey         Secret `toml:"hmac_key"`
	HMACKeyFile     string `toml:"hmac_key_file"`
	SignatureHeader string `toml:"signature_header"`
	// BodyFormat is message.FormatJSON or message.FormatText; BodyTemplate
	// a text/template of the body (empty: the message as JSON).
	BodyFormat   string `toml:"body_format"`
	BodyTemplate string `toml:"body_template"`
}

// Alertmanager is [notify.alertmanager]: each incident an alert.
type Alertmanager struct {
	// URL is Alertmanager's base address (http://127.0.0.1:9093); the
	// alerts go to URL/api/v2/alerts. Empty: off.
	URL         string   `toml:"url"`
	MinSeverity string   `toml:"min_severity"`
	Timeout     Duration `toml:"timeout"`
	// ResendInterval is how often the alerts of open incidents are sent
	// again; each says it ends 4 intervals later unless sent again.
	ResendInterval Duration `toml:"resend_interval"`
}

// Email is [notify.email]: a plain-text mail of each message.
type Email struct {
	// Server is the SMTP server's host:port; empty: off.
	Server string `toml:"server"`
	// TLS is EmailSTARTTLS, EmailTLS (implicit, port 465) or EmailNoTLS.
	TLS string `toml:"tls"`
	// TLSCA is a PEM file of the authorities the server's certificate
	// must chain to ("": the system's). Load resolves a relative path
	// against the configuration's directory.
	TLSCA string `toml:"tls_ca"`
	// Username and Password log in (AUTH); no username: no login.
	// Load replaces Password with the value of SMTPPasswordEnv or the
	// first line of PasswordFile when those are set.
	Username     string   `toml:"username"`
	Password     Secret   `toml:"password"`
	PasswordFile string   `toml:"password_file"`
	From         string   `toml:"from"`
	To           []string `toml:"to"`
	MinSeverity  string   `toml:"min_severity"`
	Timeout      Duration `toml:"timeout"`
	Attempts     int      `toml:"attempts"`
	RetryBackoff Duration `toml:"retry_backoff"`
}

// The values of Email.TLS.
const (
	EmailSTARTTLS = "starttls" // plain connection upgraded by STARTTLS, which must succeed (587)
	EmailTLS      = "tls"      // TLS from the first byte (465)
	EmailNoTLS    = "none"     // no TLS: a relay on the same host, without login
)

// The environment variables that, when set and not empty, override the
// notifiers' secrets.
const (
	HMACKeyEnv      = "ASTGUARD_WEBHOOK_HMAC_KEY"
	SMTPPasswordEnv = "ASTGUARD_SMTP_PASSWORD"
)

// The severities of min_severity.
var severities = []string{"warning", "critical"}

// Bounds of notify.queue_size and the attempts.
const (
	minNotifyQueue = 1
	maxNotifyQueue = 1 << 20
	maxAttempts    = 20
)

func defaultNotify() Notify {
	return Notify{
		QueueSize:       1024,
		BatchDelay:      Duration(2 * time.Second),
		DigestThreshold: 10,
		DigestWindow:    Duration(time.Minute),
		TroubleAfter:    Duration(time.Minute),
		Webhook: Webhook{
			MinSeverity: "warning", Timeout: Duration(5 * time.Second), Attempts: 3, RetryBackoff: Duration(time.Second),
			SignatureHeader: "X-Astguard-Signature", BodyFormat: message.FormatJSON,
		},
		Alertmanager: Alertmanager{MinSeverity: "warning", Timeout: Duration(5 * time.Second), ResendInterval: Duration(time.Minute)},
		Email: Email{
			TLS: EmailSTARTTLS, To: []string{}, MinSeverity: "warning",
			Timeout: Duration(10 * time.Second), Attempts: 3, RetryBackoff: Duration(5 * time.Second),
		},
	}
}

// resolveNotifySecrets sets the webhook's HMAC key and the SMTP password
// from their environment variables or, failing that, from the first line
// of their files (relative to dir unless absolute), and resolves
// notify.email.tls_ca against dir.
func (c *Config) resolveNotifySecrets(dir string) []error {
	var errs []error
	read := func(key, env, file string, dst *Secret) {
		if v := os.Getenv(env); v != "" {
			if strings.ContainsAny(v, "\r\n") {
				errs = append(errs, errors.New(env+" must not contain CR or LF"))
				return
			}
			*dst = Secret(v)
			return
		}
		if file == "" {
			return
		}
		s, err := readFirstLine(relativeTo(dir, file))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			return
		}
		*dst = Secret(s)
	}
	n := &c.Notify
	read("notify.webhook.hmac_key_file", HMACKeyEnv, n.Webhook.HMACKeyFile, &n.Webhook.HMACKey)
	read("notify.email.password_file", SMTPPasswordEnv, n.Email.PasswordFile, &n.Email.Password)
	if n.Email.TLSCA != "" {
		n.Email.TLSCA = relativeTo(dir, n.Email.TLSCA)
	}
	return errs
}

func relativeTo(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

// EmailTLSCA returns the CAs of notify.email.tls_ca (nil when empty: the
// system's).
func (e *Email) EmailTLSCA() (*x509.CertPool, error) {
	if e.TLSCA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(e.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("notify.email.tls_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("notify.email.tls_ca: %s holds no PEM certificate", e.TLSCA)
	}
	return pool, nil
}

// NotifySecretFiles returns the files Load read the notifiers' secrets
// from (notify.webhook.hmac_key_file, notify.email.password_file, resolved
// against the configuration file's directory), but for those whose
// environment variable is set: `guard run` checks their owner and mode.
func (c *Config) NotifySecretFiles(configPath string) []string {
	var out []string
	dir := filepath.Dir(configPath)
	if f := c.Notify.Webhook.HMACKeyFile; f != "" && os.Getenv(HMACKeyEnv) == "" {
		out = append(out, relativeTo(dir, f))
	}
	if f := c.Notify.Email.PasswordFile; f != "" && os.Getenv(SMTPPasswordEnv) == "" {
		out = append(out, relativeTo(dir, f))
	}
	return out
}

// validate checks the [notify] table.
func (n *Notify) validate(p *problems) {
	if strings.ContainsFunc(n.Instance, unicode.IsControl) || len(n.Instance) > 128 {
		p.add("notify.instance must be at most 128 bytes without control characters")
	}
	if n.QueueSize < minNotifyQueue || n.QueueSize > maxNotifyQueue {
		p.add("notify.queue_size must be between %d and %d", minNotifyQueue, maxNotifyQueue)
	}
	if n.BatchDelay < 0 {
		p.add("notify.batch_delay must be >= 0")
	}
	if n.DigestThreshold < 0 {
		p.add("notify.digest_threshold must be >= 0")
	}
	p.positive("notify.digest_window", n.DigestWindow)
	p.positive("notify.trouble_after", n.TroubleAfter)

	w := &n.Webhook
	if w.URL != "" {
		p.httpURL("notify.webhook.url", w.URL)
	}
	p.severity("notify.webhook.min_severity", w.MinSeverity)
	p.positive("notify.webhook.timeout", w.Timeout)
	p.attempts("notify.webhook.attempts", w.Attempts)
	p.positive("notify.webhook.retry_backoff", w.RetryBackoff)
	if strings.ContainsAny(string(w.HMACKey), "\r\n") {
		p.add("notify.webhook.hmac_key must not contain CR or LF")
	}
	if !validToken(w.SignatureHeader) {
		p.add("notify.webhook.signature_header: %q is not a header name (letters, digits and -)", w.SignatureHeader)
	}
	switch w.BodyFormat {
	case message.FormatJSON, message.FormatText:
		if w.BodyTemplate != "" {
			if _, err := message.Compile(w.BodyFormat, w.BodyTemplate); err != nil {
				p.add("notify.webhook.body_template: %v", err)
			}
		}
	default:
		p.add("notify.webhook.body_format: %q is not one of %s, %s", w.BodyFormat, message.FormatJSON, message.FormatText)
	}
	if w.BodyFormat == message.FormatText && w.BodyTemplate == "" {
		p.add("notify.webhook.body_format is text, but notify.webhook.body_template is empty: the message without a template is JSON")
	}

	a := &n.Alertmanager
	if a.URL != "" {
		p.httpURL("notify.alertmanager.url", a.URL)
	}
	p.severity("notify.alertmanager.min_severity", a.MinSeverity)
	p.positive("notify.alertmanager.timeout", a.Timeout)
	p.positive("notify.alertmanager.resend_interval", a.ResendInterval)

	e := &n.Email
	if e.Server != "" {
		if !validAddress(e.Server) {
			p.add("notify.email.server: %q must be host:port", e.Server)
		} else if _, port, _ := net.SplitHostPort(e.Server); !validPort(port) {
			p.add("notify.email.server: %q: the port must be a number from 1 to 65535", e.Server)
		}
		if e.From == "" {
			p.add("notify.email.from must be set when notify.email.server is")
		}
		if len(e.To) == 0 {
			p.add("notify.email.to must list at least one address when notify.email.server is")
		}
	}
	switch e.TLS {
	case EmailSTARTTLS, EmailTLS:
	case EmailNoTLS:
		if e.Username != "" {
			p.add("notify.email.username is set but notify.email.tls is none: the password would cross the network in clear (use starttls or tls)")
		}
	default:
		p.add("notify.email.tls: %q is not one of %s, %s, %s", e.TLS, EmailSTARTTLS, EmailTLS, EmailNoTLS)
	}
	if strings.ContainsFunc(e.Username, unicode.IsControl) {
		p.add("notify.email.username must not contain control characters")
	}
	if strings.ContainsAny(string(e.Password), "\r\n") {
		p.add("notify.email.password must not contain CR or LF")
	}
	if e.Password != "" && e.Username == "" {
		p.add("notify.email.password is set but notify.email.username is empty: no login is made without a username")
	}
	if e.From != "" {
		if _, err := mail.ParseAddress(e.From); err != nil || strings.ContainsFunc(e.From, unicode.IsControl) {
			p.add("notify.email.from: %q is not a mail address", e.From)
		}
	}
	for i, to := range e.To {
		if _, err := mail.ParseAddress(to); err != nil || strings.ContainsFunc(to, unicode.IsControl) {
			p.add("notify.email.to[%d]: %q is not a mail address", i, to)
		}
	}
	p.severity("notify.email.min_severity", e.MinSeverity)
	p.positive("notify.email.timeout", e.Timeout)
	p.attempts("notify.email.attempts", e.Attempts)
	p.positive("notify.email.retry_backoff", e.RetryBackoff)
}

// httpURL checks an http or https URL with a host.
func (p *problems) httpURL(key, s string) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.add("%s: %q is not an http:// or https:// URL", key, s)
		return
	}
	if u.User != nil {
		p.add("%s: %q holds a user or password, which would be logged with the URL: use the signature (hmac_key) instead", key, u.Redacted())
	}
}

func (p *problems) severity(key, s string) {
	for _, v := range severities {
		if s == v {
			return
		}
	}
	p.add("%s: %q is not one of %s", key, s, strings.Join(severities, ", "))
}

func (p *problems) attempts(key string, n int) {
	if n < 1 || n > maxAttempts {
		p.add("%s must be between 1 and %d", key, maxAttempts)
	}
}

// validToken reports whether s is a header name: letters, digits and -.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '-':
		default:
			return false
		}
	}
	return true
}

// Enabled reports whether any sender is configured.
func (n *Notify) Enabled() bool {
	return n.Webhook.URL != "" || n.Alertmanager.URL != "" || n.Email.Server != ""
}
