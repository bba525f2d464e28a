package config

import (
	"net/netip"
	"slices"
	"time"

	"github.com/astguard/astguard/internal/detector"
)

// Detector converts the [detector] and [allow] tables to the detector's
// Config. Call it on a validated Config (what Load and Parse return): an
// allow.networks entry that does not parse is left out. The slices are
// copies.
func (c *Config) Detector() detector.Config {
	d := &c.Detection
	nets := appendNetworks(make([]netip.Prefix, 0, len(c.Allow.Networks)), c.Allow.Networks)
	in := d.International
	return detector.Config{
		CallRateBurst: threshold(d.CallRate.BurstWindow, d.CallRate.BurstWarning, d.CallRate.BurstCritical),
		CallRate:      threshold(d.CallRate.Window, d.CallRate.Warning, d.CallRate.Critical),
		Concurrent:    threshold(0, d.Concurrent.Warning, d.Concurrent.Critical),
		PrefixGuess:   threshold(d.PrefixGuess.Window, d.PrefixGuess.Warning, d.PrefixGuess.Critical),
		PrefixDigits:  d.PrefixGuess.Digits,

		International:     threshold(in.Window, in.Warning, in.Critical),
		HighRisk:          threshold(in.Window, in.HighRiskWarning, in.HighRiskCritical),
		AccessCodes:       slices.Clone(in.AccessCodes),
		OutsideLine:       in.OutsideLine,
		HighRiskCountries: slices.Clone(in.HighRiskCountries),

		FailedProbes: threshold(d.FailedProbes.Window, d.FailedProbes.Warning, d.FailedProbes.Critical),
		AuthFailures: threshold(d.AuthFailures.Window, d.AuthFailures.Warning, d.AuthFailures.Critical),
		IPv6Prefix:   c.Response.IPv6Prefix,
		NewSource:    d.NewSource.Enabled,

		Cooldown:      time.Duration(d.Cooldown),
		MaxExtensions: d.MaxExtensions,
		MaxAddresses:  d.MaxAddresses,
		IdleExpiry:    time.Duration(d.IdleExpiry),

		UnauthenticatedCritical: d.UnauthenticatedCritical,

		AllowExtensions:   slices.Clone(c.Allow.Extensions),
		AllowNetworks:     nets,
		AllowDestinations: slices.Clone(c.Allow.Destinations),
	}
}

func threshold(window Duration, warning, critical int) detector.Threshold {
	return detector.Threshold{Window: time.Duration(window), Warning: warning, Critical: critical}
}
