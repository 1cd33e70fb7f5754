//! What of a profile a flame graph can show. inferno leaves out frames narrower than its
//! minimum width (0.1 px of a 1200 px picture) but lays out every stack first, and its memory
//! grows with them: a whole host's hundreds of thousands of distinct stacks took it over
//! 100 MB. Each stack is cut here above its first frame too narrow to be drawn, its weight left
//! to the frame above, which is drawn as wide as before: the picture is the same, and inferno
//! gets at most a few lines per pixel column.

/// The narrowest frame inferno draws, as a share of the whole: its default minimum width of
/// 0.1 px over its default picture of 1200 px (of which it draws on a little less).
const MIN_SHARE: f64 = 0.1 / 1200.0;

/// Where the weight of processes too small to be drawn each goes, so that together they keep
/// their share of the picture.
pub const SMALL_ROOTS: &str = "[processes too small to show]";

/// The lines of `folded` (`stack weight`) that inferno would draw, cut as said above, sorted.
pub fn drawable(folded: &[String]) -> Vec<String> {
    let stacks: Vec<(&str, u64)> = folded
        .iter()
        .filter_map(|l| {
            let (stack, w) = l.rsplit_once(' ')?;
            Some((stack, w.parse().ok()?))
        })
        .collect();
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let narrow = |w: u64| (w as f64) < total as f64 * MIN_SHARE;
    // Frame by frame, so that every stack under a frame comes together (as text, `a;b-c`
    // would come between `a;b` and `a;b;c`).
    let mut order: Vec<usize> = (0..stacks.len()).collect();
    order.sort_by(|&a, &b| stacks[a].0.split(';').cmp(stacks[b].0.split(';')));
    let keep = frames_to_keep(&order, &stacks, narrow);
    let mut out: Vec<(&str, u64)> = Vec::new();
    let mut small = 0u64;
    for (pos, &i) in order.iter().enumerate() {
        let (stack, w) = stacks[i];
        let kept = match keep[pos] {
            0 => {
                small += w;
                continue;
            }
            u32::MAX => stack,
            n => prefix(stack, n as usize),
        };
        match out.last_mut() {
            Some(last) if last.0 == kept => last.1 += w,
            _ => out.push((kept, w)),
        }
    }
    if small > 0 {
        out.push((SMALL_ROOTS, small));
    }
    out.sort_unstable();
    let mut lines: Vec<String> = Vec::with_capacity(out.len());
    let mut iter = out.into_iter().peekable();
    while let Some((stack, mut w)) = iter.next() {
        while let Some(next) = iter.next_if(|n| n.0 == stack) {
            w += next.1;
        }
        lines.push(format!("{stack} {w}"));
    }
    lines
}

/// For each stack (in `order`, frame by frame), how many of its frames to keep: all
/// (`u32::MAX`), or those above its first frame too narrow to draw. One pass over the stacks
/// with the frames of the current one open: a frame's weight is known when a stack that is not
/// under it comes.
fn frames_to_keep(
    order: &[usize],
    stacks: &[(&str, u64)],
    narrow: impl Fn(u64) -> bool,
) -> Vec<u32> {
    let mut keep = vec![u32::MAX; order.len()];
    // The open frames, outermost first: the first stack under each, and their weight so far.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut close = |open: &mut Vec<(usize, u64)>, depth: usize, end: usize| {
        while open.len() > depth {
            let Some((first, w)) = open.pop() else { break };
            if narrow(w) {
                let at = open.len() as u32;
                for k in &mut keep[first..end] {
                    *k = (*k).min(at);
                }
            }
        }
    };
    let mut previous: Option<&str> = None;
    for (pos, &i) in order.iter().enumerate() {
        let (stack, w) = stacks[i];
        let common = previous.map_or(0, |p| {
            p.split(';')
                .zip(stack.split(';'))
                .take_while(|(a, b)| a == b)
                .count()
        });
        close(&mut open, common, pos);
        let depth = stack.split(';').count();
        while open.len() < depth {
            open.push((pos, 0));
        }
        for frame in &mut open {
            frame.1 += w;
        }
        previous = Some(stack);
    }
    close(&mut open, 0, order.len());
    keep
}

/// The first `n` frames of a stack.
fn prefix(stack: &str, n: usize) -> &str {
    match stack.match_indices(';').nth(n - 1) {
        Some((at, _)) => &stack[..at],
        None => stack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[(&str, u64)]) -> Vec<String> {
        v.iter().map(|(s, w)| format!("{s} {w}")).collect()
    }

    #[test]
    fn wide_stacks_stay_whole() {
        let folded = lines(&[("a;b", 5), ("a;b-x", 2), ("a;b;c", 3), ("z", 10)]);
        assert_eq!(drawable(&folded), folded);
    }

    #[test]
    fn narrow_frames_are_cut_into_the_frame_above_and_small_roots_kept_together() {
        // 1,000,000 in all: a frame under 83 is narrower than 0.1 px of 1200.
        let mut v = vec![("app;main;work", 999_000), ("app;main", 500)];
        let many: Vec<String> = (0..400).map(|i| format!("app;main;tiny{i};leaf")).collect();
        v.extend(many.iter().map(|s| (s.as_str(), 1)));
        let roots: Vec<String> = (0..100).map(|i| format!("proc{i};main")).collect();
        v.extend(roots.iter().map(|s| (s.as_str(), 1)));
        let out = drawable(&lines(&v));
        assert_eq!(
            out,
            vec![
                format!("{SMALL_ROOTS} 100"),
                "app;main 900".to_owned(),
                "app;main;work 999000".to_owned(),
            ]
        );
        let total: u64 = out
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 1_000_000);
    }

    #[test]
    fn a_narrow_frame_cuts_only_its_own_stacks() {
        // Under `a`, `n` is narrow but `w` is not; `w`'s children stay.
        let folded = lines(&[
            ("a;n;x", 1),
            ("a;w;p", 5000),
            ("a;w;q", 5000),
            ("b", 100_000),
        ]);
        assert_eq!(
            drawable(&folded),
            lines(&[("a", 1), ("a;w;p", 5000), ("a;w;q", 5000), ("b", 100_000)])
        );
    }
}
