package detector

import (
	"net/netip"
	"time"
)

// Threshold is a rule's warning and critical levels over a sliding window.
// A level of 0 disables that severity.
type Threshold struct {
	Window   time.Duration
	Warning  int
	Critical int
}

// Config holds every knob of the detector. The config package fills it from
// TOML; Default returns the values of config.toml.example.
type Config struct {
	// CallRateBurst and CallRate count calls an extension originated, over a
	// short (per second) and a long (per minute) window.
	CallRateBurst Threshold
	CallRate      Threshold
	// Concurrent counts live calls an extension originated (Window unused).
	Concurrent Threshold
	// PrefixGuess counts the distinct prefixes dialled in front of the same
	// destination (its last PrefixDigits digits) within the window.
	PrefixGuess  Threshold
	PrefixDigits int
	// International counts calls to international destinations; calls to a
	// country code in HighRiskCountries use HighRisk's levels instead
	// (same window as International).
	International     Threshold
	HighRisk          Threshold
	AccessCodes       []string // international access codes, e.g. 00, 011, +
	OutsideLine       string   // optional outside-line prefix, e.g. 9
	HighRiskCountries []string // country codes (digits), e.g. 53, 252, 882
	// FailedProbes counts unroutable attempts per extension and per address.
	FailedProbes Threshold
	// AuthFailures counts failed authentications per source address, once per request.
	AuthFailures Threshold
	// IPv6Prefix is the length of the network an IPv6 source is counted by
	// (auth_failures, failed_probes): an attacker changes its address
	// inside its /64 at will, so with 64 the whole /64 is one source. 0 or
	// 128: each address alone. IPv4 sources are always single addresses.
	IPv6Prefix int
	// NewSource warns when an extension authenticates from an address it has
	// not used before.
	NewSource bool

	// UnauthenticatedCritical lets calls of an endpoint never seen
	// authenticating with its secret (SuccessfulAuth with UsingPassword 1,
	// PeerStatus Registered: trunks and peers matched by address never are)
	// raise critical alerts; by default they stop at warning, so a busy
	// inbound trunk is never acted on.
	UnauthenticatedCritical bool

	// Cooldown: one alert per rule, key and severity per Cooldown.
	Cooldown time.Duration
	// MaxExtensions and MaxAddresses cap the tracked keys; IdleExpiry drops
	// the state of a key not seen for that long (unless an incident is in progress).
	MaxExtensions int
	MaxAddresses  int
	IdleExpiry    time.Duration

	// Allow-lists: extensions ("carrier" or "SIP/carrier"), source networks
	// and destination prefixes the detector never counts.
	AllowExtensions   []string
	AllowNetworks     []netip.Prefix
	AllowDestinations []string
}
