package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	mail "github.com/wneessen/go-mail"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify/message"
)

// maxSubject bounds a mail's subject, in characters.
const maxSubject = 200

// email sends each message as a plain-text mail over SMTP, with go-mail:
// STARTTLS that must succeed (587), or TLS from the first byte (465), or
// no TLS for a relay on the same host; AUTH by the strongest mechanism
// the server offers (never PLAIN or LOGIN without TLS); the headers
// encoded as RFC 2047 wants them.
type email struct {
	cfg  config.Email
	host string
	port int
	tls  *tls.Config
}

func newEmail(c *config.Email) (*email, error) {
	host, port, err := net.SplitHostPort(c.Server)
	if err != nil {
		return nil, fmt.Errorf("notify.email.server: %w", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("notify.email.server: %q: the port is not a number", c.Server)
	}
	pool, err := c.EmailTLSCA()
	if err != nil {
		return nil, err
	}
	return &email{cfg: *c, host: host, port: p, tls: &tls.Config{ServerName: host, RootCAs: pool, MinVersion: tls.VersionTLS12}}, nil
}

func (e *email) Name() string     { return nameEmail }
func (e *email) describe() string { return e.cfg.Server + " (" + e.cfg.TLS + ")" }

// Subject is the subject of m's mail: "[astguard INSTANCE] TITLE", on one
// line, at most 200 characters.
func Subject(m *message.Message) string {
	s := message.Clean("[astguard " + m.Instance + "] " + m.Title)
	if r := []rune(s); len(r) > maxSubject {
		s = string(r[:maxSubject-1]) + "…"
	}
	return s
}

// msg is the mail of m.
func (e *email) msg(m *message.Message) (*mail.Msg, error) {
	msg := mail.NewMsg(mail.WithNoDefaultUserAgent())
	if err := msg.From(e.cfg.From); err != nil {
		return nil, Permanent(fmt.Errorf("notify.email.from: %w", err))
	}
	if err := msg.To(e.cfg.To...); err != nil {
		return nil, Permanent(fmt.Errorf("notify.email.to: %w", err))
	}
	msg.Subject(Subject(m))
	msg.SetUserAgent("astguard")
	msg.SetDate()
	msg.SetMessageID()
	// The text's lines are the notifier's own; the values in them are
	// cleaned. A stray CR is all that could still break a line.
	msg.SetBodyString(mail.TypeTextPlain, strings.ReplaceAll(m.Text, "\r", `\r`))
	return msg, nil
}

// Send mails m once. A refusal that the server says is permanent (a 5xx
// reply, a refused login) is not tried again.
func (e *email) Send(ctx context.Context, m *message.Message) error {
	msg, err := e.msg(m)
	if err != nil {
		return err
	}
	opts := []mail.Option{mail.WithPort(e.port), mail.WithTLSConfig(e.tls)}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, mail.WithTimeout(max(time.Millisecond, time.Until(dl))))
	}
	switch e.cfg.TLS {
	case config.EmailTLS:
		opts = append(opts, mail.WithSSL())
	case config.EmailNoTLS:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	default:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	}
	if e.cfg.Username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover),
			mail.WithUsername(e.cfg.Username), mail.WithPassword(e.cfg.Password.Reveal()))
	}
	c, err := mail.NewClient(e.host, opts...)
	if err != nil {
		return Permanent(err)
	}
	if err := c.DialAndSendWithContext(ctx, msg); err != nil {
		err = fmt.Errorf("SMTP %s: %w", e.cfg.Server, err)
		var se *mail.SendError
		var te *textproto.Error
		if (errors.As(err, &se) && !se.IsTemp()) || (errors.As(err, &te) && te.Code >= 500) {
			return Permanent(err) // a 5xx reply: a refused login, sender or recipient
		}
		return err
	}
	return nil
}
