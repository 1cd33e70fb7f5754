//! Go stacks: a Go program's frames come from Go's own function table (`.gopclntab`), which
//! leads back through `crypto/sha256`'s assembly even though it uses RBP for data, where a
//! frame pointer walk loses the caller. Not in the VMs, which carry no Go toolchain.

use bar_tests::{
    Recording, Workload, go_sha_command, go_sha_or_skip, metric, out_dir, root_or_skip,
};

/// The frames above sha256's block function, root first, as Go names them.
const CHAIN: [&str; 6] = [
    "runtime.main",
    "main.main",
    "main.hashLoop",
    "crypto/sha256.Sum256",
    "crypto/sha256.(*digest).Write",
    "crypto/sha256.block",
];

#[test]
fn go_stacks_are_whole_through_assembly_that_uses_rbp_for_data() {
    if !root_or_skip("go_stacks_are_whole_through_assembly_that_uses_rbp_for_data") {
        return;
    }
    let Some(exe) = go_sha_or_skip("go_stacks_are_whole_through_assembly_that_uses_rbp_for_data")
    else {
        return;
    };
    let dir = out_dir("unwind-go");
    let mut w = Workload::spawn(go_sha_command(&exe, 3.0));
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &["attach", "--pid", &pid, "--events", "cpu", "-F", "199"],
        &dir,
    );
    w.go();
    w.finish();
    let rec = rec.finish();
    let folded = rec.folded("cpu");
    let (mut total, mut good) = (0, 0);
    for (stack, w) in &folded.stacks {
        let user: Vec<&str> = stack
            .split(';')
            .skip(1)
            .filter(|f| !f.ends_with("_[k]"))
            // The assembly's ABI wrapper keeps the function's name with a suffix.
            .map(|f| f.trim_end_matches(".abi0"))
            .collect();
        let Some(block) = user.iter().position(|f| *f == "crypto/sha256.block") else {
            continue;
        };
        total += w;
        // From the goroutine's first frame down to the block function, the chain in order
        // (sha256 may call itself through checkSum), nothing made up.
        let mut rest = user[1..=block].iter();
        if user[0] == "runtime.goexit"
            && user.get(1) == Some(&CHAIN[0])
            && CHAIN.iter().all(|c| rest.any(|f| f == c))
            && !user
                .iter()
                .any(|f| f.starts_with("[unknown") || f.starts_with("[truncated"))
        {
            good += w;
        }
    }
    assert!(
        total > 0 && good * 100 >= total * 90,
        "{good} of {total} of the weight in crypto/sha256.block has the whole chain\n{:#?}",
        folded.stacks
    );
    metric("unwind_go_whole_pct", good * 100 / total);
    let unwind = &rec.summary()["unwind"];
    assert!(unwind["frames"]["go"].as_u64() > Some(0), "{unwind}");
}
