// Reaction counts: single `reaction` broadcasts and aggregated
// `reaction_counts` (what a slow socket or a room in peak mode gets) folded
// into one tally.

/** Counts by emoji. */
export type Counts = Record<string, number>;

/** A running tally of a room's reactions. */
export class Tally {
  readonly counts: Counts = {};

  /** One `reaction` broadcast (payload `{emoji}`); returns the change. */
  reaction(payload: unknown): Counts {
    const emoji = (payload as { emoji?: unknown } | null)?.emoji;
    return this.add({ [typeof emoji === 'string' ? emoji : 'other']: 1 });
  }

  /** One `reaction_counts` broadcast (payload `{counts}`); returns the change. */
  aggregated(payload: unknown): Counts {
    const counts = (payload as { counts?: unknown } | null)?.counts;
    const change: Counts = {};
    if (counts && typeof counts === 'object') {
      for (const [emoji, n] of Object.entries(counts as Record<string, unknown>)) {
        if (typeof n === 'number' && Number.isFinite(n) && n > 0) change[emoji] = n;
      }
    }
    return this.add(change);
  }

  private add(change: Counts): Counts {
    for (const [emoji, n] of Object.entries(change)) this.counts[emoji] = (this.counts[emoji] ?? 0) + n;
    return change;
  }
}
