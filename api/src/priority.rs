//! How traffic is shared across a service's priority groups — the rule
//! `meshfed.discovery.v1.PriorityGroup` documents, as code both the
//! controller (which publishes shares) and the sidecar (which recomputes them
//! with what it observes) use.

/// One group's health as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupHealth {
    /// Endpoints able to serve.
    pub healthy: u32,
    /// All endpoints.
    pub total: u32,
    /// Healthy fraction below which the group spills to the next one. Zero
    /// marks a barrier: traffic goes past it only when neither it nor any
    /// group before it has a healthy endpoint.
    pub spill_threshold: f64,
}

/// Shares in permille, one per group. Walking the groups with 1000 to give:
/// a group with healthy fraction `h >= t` takes all that remains, otherwise
/// `remaining * h / t`; what is left at the end is spread over the groups
/// that took something, in proportion. All zero when nothing is healthy.
pub fn shares(groups: &[GroupHealth]) -> Vec<u32> {
    let mut out = vec![0f64; groups.len()];
    let mut remaining = 1000f64;
    let mut any_healthy = false;
    for (i, g) in groups.iter().enumerate() {
        let h = if g.total == 0 {
            0.0
        } else {
            f64::from(g.healthy.min(g.total)) / f64::from(g.total)
        };
        any_healthy |= g.healthy > 0;
        let t = g.spill_threshold;
        if t <= 0.0 {
            if g.healthy > 0 {
                out[i] = remaining;
                remaining = 0.0;
            }
            if any_healthy {
                break;
            }
            continue;
        }
        let take = remaining * (h / t).min(1.0);
        out[i] = take;
        remaining -= take;
        if remaining <= 0.0 {
            break;
        }
    }
    let given: f64 = out.iter().sum();
    if given <= 0.0 {
        return vec![0; groups.len()];
    }
    let scaled: Vec<f64> = out.iter().map(|s| s * 1000.0 / given).collect();
    // Round so the shares still add up to exactly 1000.
    let mut ints: Vec<u32> = scaled.iter().map(|s| s.floor() as u32).collect();
    let short = 1000 - ints.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..ints.len()).collect();
    order.sort_by(|a, b| {
        let fa = scaled[*a] - scaled[*a].floor();
        let fb = scaled[*b] - scaled[*b].floor();
        fb.total_cmp(&fa).then(a.cmp(b))
    });
    for i in order.into_iter().take(short as usize) {
        ints[i] += 1;
    }
    ints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(healthy: u32, total: u32, t: f64) -> GroupHealth {
        GroupHealth {
            healthy,
            total,
            spill_threshold: t,
        }
    }

    #[test]
    fn healthy_first_group_takes_everything() {
        assert_eq!(shares(&[g(3, 3, 0.7), g(2, 2, 0.7)]), vec![1000, 0]);
        // At the threshold exactly: still everything.
        assert_eq!(shares(&[g(7, 10, 0.7), g(2, 2, 0.7)]), vec![1000, 0]);
    }

    #[test]
    fn below_the_threshold_part_spills() {
        // h = 0.5, t = 0.7: keeps 714, spills 286.
        assert_eq!(shares(&[g(1, 2, 0.7), g(2, 2, 0.7)]), vec![714, 286]);
        // Spill cascades: 0 healthy in the first two groups.
        assert_eq!(
            shares(&[g(0, 2, 0.7), g(0, 1, 0.7), g(1, 1, 0.7)]),
            vec![0, 0, 1000]
        );
    }

    #[test]
    fn leftovers_go_back_to_groups_that_took_some() {
        // The only other group is empty: the first keeps all.
        assert_eq!(shares(&[g(1, 2, 0.7), g(0, 3, 0.7)]), vec![1000, 0]);
    }

    #[test]
    fn a_barrier_keeps_traffic_local_while_anything_local_is_healthy() {
        // local zone (half healthy), other local zones (barrier), remote.
        assert_eq!(
            shares(&[g(1, 2, 0.7), g(1, 1, 0.0), g(5, 5, 0.7)]),
            vec![714, 286, 0]
        );
        assert_eq!(
            shares(&[g(1, 2, 0.7), g(0, 1, 0.0), g(5, 5, 0.7)]),
            vec![1000, 0, 0]
        );
        assert_eq!(
            shares(&[g(0, 2, 0.7), g(0, 1, 0.0), g(5, 5, 0.7)]),
            vec![0, 0, 1000]
        );
    }

    #[test]
    fn nothing_healthy_means_no_shares() {
        assert_eq!(shares(&[g(0, 2, 0.7), g(0, 0, 0.7)]), vec![0, 0]);
        assert_eq!(shares(&[]), Vec::<u32>::new());
    }
}
