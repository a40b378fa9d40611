//go:build race

package m2mpsk

// The race detector's shadow memory makes RSS no measure of leaks.
func init() { raceEnabled = true }
