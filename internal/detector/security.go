package detector

import (
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// Security events: password guessing and unroutable probes per address.

func serviceTech(s string) (ami.Tech, bool) {
	switch s {
	case "SIP":
		return ami.TechSIP, true
	case "PJSIP":
		return ami.TechPJSIP, true
	case "IAX2":
		return ami.TechIAX2, true
	}
	return ami.ParseTech(s)
}

func (d *Detector) security(ev *ami.Event) {
	switch ev.Security {
	case ami.SecSuccessfulAuth:
		tech, ok := serviceTech(ev.Service)
		if !ok || !ev.RemoteAddr.IsValid() || !ami.ValidName(ev.AccountID) {
			return // AMI logins included: not an extension
		}
		k := ami.Extension{Tech: tech, Name: ev.AccountID}
		if d.extAllowed(k) {
			return
		}
		if e := d.ext(k); e != nil {
			// The request came from RemoteAddress whatever UsingPassword
			// says; only a password proves the sender holds the secret.
			if ev.UsingPassword {
				e.authed = true
			}
			d.learnSource(e, ev.RemoteAddr)
		}
	case ami.SecFailedACL:
		if ev.ACLName == "no_extension_match" {
			d.failedProbe(ev)
			return
		}
		d.authFailure(ev)
	case ami.SecInvalidPassword, ami.SecChallengeResponseFailed, ami.SecInvalidAccountID:
		d.authFailure(ev)
	}
}

func (d *Detector) failedProbe(ev *ami.Event) {
	if !ev.RemoteAddr.IsValid() || d.addrAllowed(ev.RemoteAddr) {
		return
	}
	a := d.addr(ev.RemoteAddr.Unmap())
	if a == nil {
		return
	}
	if IsDialled(ev.AccountID) {
		addSample(&a.numbers, ev.AccountID)
	}
	a.probes.add(d.now, ringSize(d.cfg.FailedProbes))
	d.checkAddr(a, RuleFailedProbes, d.cfg.FailedProbes, a.probes.since(d.now-int64(d.cfg.FailedProbes.Window)), "unroutable attempts")
}

// dialledAccount reports whether a chan_sip AccountID is the dialled number of
// an INVITE (chan_sip puts the Request-URI user there) rather than a user name.
func dialledAccount(ev *ami.Event) bool {
	if ev.Service != "SIP" || !IsDialled(ev.AccountID) {
		return false
	}
	return ev.AccountID[0] == '+' || len(ev.AccountID) >= dialledAccountLen
}

func (d *Detector) authFailure(ev *ami.Event) {
	if !ev.RemoteAddr.IsValid() || d.addrAllowed(ev.RemoteAddr) {
		return
	}
	a := d.addr(ev.RemoteAddr.Unmap())
	if a == nil {
		return
	}
	if dialledAccount(ev) {
		addSample(&a.numbers, ev.AccountID)
	} else if acct := ev.AccountID; acct != "<unknown>" && ami.ValidName(acct) {
		switch {
		case a.firstAccount == "":
			a.firstAccount = strings.Clone(acct)
		case a.firstAccount != acct:
			if a.accounts == nil {
				addSample(&a.accounts, a.firstAccount)
			}
			addSample(&a.accounts, acct)
		}
	}
	// PJSIP raises several events for one request under its Call-ID;
	// chan_sip's SessionID is a reused memory address, never a key.
	if ev.Service == "PJSIP" && ev.SessionID != "" {
		if a.session == ev.SessionID && d.now-a.sessionAt < int64(sessionDedupe) {
			return
		}
		a.session, a.sessionAt = strings.Clone(ev.SessionID), d.now
	}
	a.auth.add(d.now, ringSize(d.cfg.AuthFailures))
	d.checkAddr(a, RuleAuthFailures, d.cfg.AuthFailures, a.auth.since(d.now-int64(d.cfg.AuthFailures.Window)), "failed authentications")
}
