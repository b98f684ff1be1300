package chaos

import (
	"math/rand/v2"
	"slices"
	"time"
)

// Profile is the shape of a run.
type Profile struct {
	Name    string
	Seed    uint64
	Workers int
	TTL     time.Duration
	// Rounds is how many times each fault kind is injected, in a seeded
	// order; with Length set, faults of random kinds are scheduled instead
	// until their planned time reaches Length.
	Rounds int
	Length time.Duration
	// Faults limits the fault kinds scheduled; nil means every kind.
	Faults []Kind
}

// kinds is the fault kinds of p's schedule.
func (p Profile) kinds() []Kind {
	if p.Faults != nil {
		return slices.Clone(p.Faults)
	}
	return Kinds()
}

// Short is the profile that runs with every go test: each fault kind once
// per variant, with a fixed seed.
func Short() Profile {
	return Profile{Name: "short", Seed: 1, Workers: 5, TTL: 2 * time.Second, Rounds: 1}
}

// ShortAdmission is the short profile of the admission variants: one
// partition of a holder per variant, with a fixed seed.
func ShortAdmission() Profile {
	p := Short()
	p.Faults = []Kind{WorkerPartition}
	return p
}

// Full is the profile of make chaos: faults of random kinds for about
// length per variant.
func Full(seed uint64, length time.Duration) Profile {
	return Profile{Name: "full", Seed: seed, Workers: 5, TTL: 2 * time.Second, Length: length}
}

// Step is one planned fault.
type Step struct {
	Kind Kind
	// Gap is the quiet time before the fault, counted from the moment the
	// workers made progress again after the previous one.
	Gap time.Duration
	// Duration is how long the fault lasts: the partition, the pause, or
	// the time a killed member stays down.
	Duration time.Duration
	// Pick chooses the target among the candidates (members or workers).
	Pick uint64
}

// Schedule returns the faults of a run of p for one variant. The same
// profile always gives the same schedule.
func Schedule(p Profile, v Variant) []Step {
	// Each variant has its own stream, so that both get the same mix
	// without the same order.
	rng := rand.New(rand.NewPCG(p.Seed, uint64(len(v))))
	step := func(k Kind) Step {
		return Step{
			Kind:     k,
			Gap:      between(rng, 2*time.Second, 4*time.Second),
			Duration: duration(rng, k, p.TTL),
			Pick:     rng.Uint64(),
		}
	}
	var steps []Step
	if p.Length > 0 {
		kinds := p.kinds()
		var planned time.Duration
		for planned < p.Length {
			s := step(kinds[rng.IntN(len(kinds))])
			steps = append(steps, s)
			planned += s.Gap + s.Duration
		}
		return steps
	}
	for range p.Rounds {
		kinds := p.kinds()
		rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, k := range kinds {
			steps = append(steps, step(k))
		}
	}
	return steps
}

// duration is how long a fault of kind k lasts. Worker faults outlast the
// TTL, so that another worker takes the lock while they last.
func duration(rng *rand.Rand, k Kind, ttl time.Duration) time.Duration {
	switch k {
	case WorkerPartition:
		return ttl + between(rng, time.Second, 2*time.Second)
	case WorkerPause:
		return ttl + between(rng, 1500*time.Millisecond, 3*time.Second)
	case MemberPartition:
		return between(rng, 2*time.Second, 5*time.Second)
	case MemberPause:
		return between(rng, 2*time.Second, 4*time.Second)
	default: // kills: how long the member stays down
		return between(rng, time.Second, 4*time.Second)
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)).Round(time.Millisecond)
}
