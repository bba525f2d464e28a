package detector

import "time"

// DefaultHighRiskCountries are country codes of destinations commonly used
// for international revenue share fraud (small island and satellite
// networks, premium ranges, Caribbean NANP areas).
var DefaultHighRiskCountries = []string{
	"53", "216", "218", "220", "221", "222", "223", "224", "225", "226", "227", "228", "229",
	"231", "232", "234", "235", "236", "237", "238", "239", "240", "241", "242", "243", "245",
	"247", "248", "249", "252", "253", "255", "256", "257", "261", "263", "269", "290",
	"371", "372", "375", "381", "423",
	"670", "672", "673", "674", "675", "676", "677", "678", "679", "680", "681", "682", "683",
	"685", "686", "687", "688", "689", "690", "691", "692",
	"870", "881", "882", "883", "979",
	"1268", "1284", "1473", "1649", "1664", "1758", "1767", "1784", "1809", "1829", "1849",
	"1868", "1869", "1876",
}

// Default returns the detector settings of config.toml.example. They catch
// the recorded attacks and leave ordinary work alone: a call every few
// seconds, a handful of calls up at once, an occasional international call.
func Default() Config {
	return Config{
		CallRateBurst:     Threshold{Window: time.Second, Warning: 3, Critical: 5},
		CallRate:          Threshold{Window: time.Minute, Warning: 30, Critical: 60},
		Concurrent:        Threshold{Warning: 4, Critical: 8},
		PrefixGuess:       Threshold{Window: 10 * time.Minute, Warning: 2, Critical: 3},
		PrefixDigits:      8,
		International:     Threshold{Window: 10 * time.Minute, Warning: 10, Critical: 20},
		HighRisk:          Threshold{Window: 10 * time.Minute, Warning: 1, Critical: 3},
		AccessCodes:       []string{"00", "011", "+"},
		HighRiskCountries: append([]string(nil), DefaultHighRiskCountries...),
		FailedProbes:      Threshold{Window: time.Minute, Warning: 3, Critical: 5},
		AuthFailures:      Threshold{Window: time.Minute, Warning: 3, Critical: 5},
		IPv6Prefix:        64,
		NewSource:         true,
		Cooldown:          5 * time.Minute,
		MaxExtensions:     100000,
		MaxAddresses:      50000,
		IdleExpiry:        time.Hour,
	}
}
