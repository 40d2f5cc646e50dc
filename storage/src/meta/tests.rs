//! Tests of the metadata database, domain by domain.

use super::*;

const DAY: u64 = 86_400_000;

fn fresh() -> (tempfile::TempDir, Meta) {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20).expect("open");
    (dir, meta)
}

/// A user without password: no argon2 cost.
fn user(meta: &Meta, name: &str) -> u64 {
    meta.ensure_external_user(name, 1).expect("user")
}

#[test]
fn names_are_validated_and_unique() {
    let (_dir, meta) = fresh();
    let alice = user(&meta, "alice");
    let too_long = "x".repeat(65);
    for bad in ["", "a b", "émile", "a/b", "a:b", too_long.as_str()] {
        assert!(matches!(
            meta.ensure_external_user(bad, 1),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            meta.create_user(bad, PHC, 1),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            meta.create_room(bad, false, alice, 1),
            Err(Error::InvalidInput(_))
        ));
    }
    let longest = "A.b_c-9".repeat(9) + "x";
    assert_eq!(longest.len(), 64);
    assert!(meta.create_room(&longest, false, alice, 1).is_ok());

    // A JWT subject and a registered name live apart: neither reaches
    // the other.
    let registered = meta.create_user("alice", PHC, 1).unwrap();
    assert_ne!(registered, alice);
    assert_eq!(meta.ensure_external_user("alice", 2).unwrap(), alice);
    assert_eq!(meta.user_by_name("alice").unwrap().unwrap().id, registered);
    assert_eq!(meta.external_user("alice").unwrap().unwrap().id, alice);
    assert!(
        meta.external_user("ALICE").unwrap().is_none(),
        "subjects are exact"
    );
    // Registered names are unique in any case; the display form is kept.
    let bob = meta.create_user("Bob", PHC, 1).unwrap();
    assert!(matches!(
        meta.create_user("bOB", PHC, 1),
        Err(Error::AlreadyExists(_))
    ));
    let found = meta.user_by_name("BOB").unwrap().unwrap();
    assert_eq!((found.id, found.name.as_str()), (bob, "Bob"));
    // Public rooms' names are unique in any case; private rooms' are not
    // indexed, so a hidden room never takes a name.
    meta.create_room("lobby", false, alice, 1).unwrap();
    assert!(matches!(
        meta.create_room("LOBBY", false, alice, 1),
        Err(Error::AlreadyExists(_))
    ));
    let hidden = meta.create_room("secret", true, alice, 1).unwrap();
    meta.create_room("secret", true, bob, 1).unwrap();
    let public = meta.create_room("Secret", false, bob, 1).unwrap();
    assert_eq!(meta.room_by_name("secret").unwrap().unwrap().id, public);
    assert_ne!(hidden, public);
    assert!(meta.create_room("lobby", true, alice, 1).is_ok());
    assert!(matches!(
        meta.create_room("nobody", false, 99, 1),
        Err(Error::NotFound(_))
    ));
    assert_eq!(meta.users().unwrap().len(), 3);
}

/// A PHC string as the server stores (the hash of nothing in
/// particular: this crate never hashes).
const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

#[test]
fn password_hashes_are_stored_as_given_and_never_shown() {
    let (_dir, meta) = fresh();
    let id = meta.create_user("bob", PHC, 7).unwrap();
    for bad in ["", "hunter2", &"$".repeat(513)] {
        assert!(matches!(
            meta.create_user("carol", bad, 1),
            Err(Error::InvalidInput(_))
        ));
    }
    let stored = meta.user(id).unwrap().unwrap();
    assert_eq!((stored.name.as_str(), stored.created_ms), ("bob", 7));
    assert_eq!(stored.password_hash.as_deref(), Some(PHC));
    assert!(
        !format!("{stored:?}").contains("argon2"),
        "Debug leaks the hash"
    );
    assert_eq!(meta.user_by_name("bob").unwrap(), Some(stored));
    let ext = user(&meta, "ext");
    assert_eq!(meta.user(ext).unwrap().unwrap().password_hash, None);
}

#[test]
fn sessions_expire_and_delete() {
    let (_dir, meta) = fresh();
    let alice = user(&meta, "alice");
    let (a, b) = ([1u8; 32], [2u8; 32]);
    meta.create_session(&a, alice, 100).unwrap();
    meta.create_session(&b, alice, 200).unwrap();
    assert!(matches!(
        meta.create_session(&a, alice, 500),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        meta.create_session(&[3; 32], 99, 500),
        Err(Error::NotFound(_))
    ));

    assert_eq!(meta.session(&a, 99).unwrap(), Some((alice, 100)));
    assert_eq!(meta.session(&a, 100).unwrap(), None);
    assert_eq!(meta.session(&[3; 32], 0).unwrap(), None);

    assert_eq!(meta.purge_expired_sessions(150).unwrap(), 1);
    assert_eq!(meta.session(&b, 150).unwrap(), Some((alice, 200)));
    assert!(meta.delete_session(&b).unwrap());
    assert!(!meta.delete_session(&b).unwrap());
    assert_eq!(meta.session(&b, 150).unwrap(), None);
    assert_eq!(meta.purge_expired_sessions(u64::MAX).unwrap(), 0);
}

/// "Log out everywhere" and password changes: every session of one user
/// but the one kept goes, others' stay; the new hash replaces the old.
#[test]
fn a_users_sessions_end_together_and_passwords_change() {
    let (_dir, meta) = fresh();
    let alice = meta.create_user("alice", "$argon2id$old", 1).unwrap();
    let bob = user(&meta, "bob");
    for (i, owner) in [(1u8, alice), (2, alice), (3, alice), (4, bob)] {
        meta.create_session(&[i; 32], owner, 1000 + i as u64)
            .unwrap();
    }
    let mut gone = meta.delete_sessions_of(alice, Some(&[2; 32])).unwrap();
    gone.sort();
    assert_eq!(gone, [([1; 32], 1001), ([3; 32], 1003)]);
    assert_eq!(meta.session(&[2; 32], 0).unwrap(), Some((alice, 1002)));
    assert_eq!(meta.session(&[4; 32], 0).unwrap(), Some((bob, 1004)));
    assert_eq!(
        meta.delete_sessions_of(alice, None).unwrap(),
        [([2; 32], 1002)]
    );
    assert_eq!(meta.session(&[2; 32], 0).unwrap(), None);

    meta.set_password(alice, "$argon2id$new").unwrap();
    let row = meta.user(alice).unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.password_hash.as_deref()),
        ("alice", Some("$argon2id$new"))
    );
    assert!(matches!(
        meta.set_password(alice, "plain"),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.set_password(99, "$argon2id$x"),
        Err(Error::NotFound(_))
    ));
}

/// Pages of rooms and members: ordered by id, `len` at most, a cursor
/// that continues exactly where the page stopped, and a bounded scan when
/// few of many rooms are visible.
#[test]
fn room_and_member_lists_come_in_pages() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    // Bob can see the public rooms only: one in every 1000 past the first
    // scan's reach.
    let total = ROOM_PAGE_SCAN_ROWS_MAX + 1500;
    let mut public = Vec::new();
    for i in 0..total {
        let open = i % 1000 == 999 || i < 5;
        let id = meta.create_room(&format!("r{i}"), !open, alice, 1).unwrap();
        if open {
            public.push(id);
        }
    }
    let (mut seen, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = meta.visible_rooms(bob, after, 3).unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|r| r.id));
        pages += 1;
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, public, "every visible room once, in order");
    assert!(pages >= 3, "the scan bound split the pages: {pages}");
    // Alice sees them all, len at a time.
    let first = meta.visible_rooms(alice, 0, 2).unwrap();
    assert_eq!(first.items.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(first.next, Some(2));
    let last = meta.visible_rooms(alice, total as u64 - 1, 2).unwrap();
    assert_eq!((last.items.len(), last.next), (1, None));
    assert!(meta
        .visible_rooms(alice, u64::MAX, 2)
        .unwrap()
        .items
        .is_empty());

    let room = public[0];
    let users: Vec<u64> = (0..7).map(|i| user(&meta, &format!("m{i}"))).collect();
    for &u in &users {
        meta.add_member(room, u, Role::Member).unwrap();
    }
    let mut all = vec![alice];
    all.extend(&users);
    let (mut seen, mut after) = (Vec::new(), 0);
    loop {
        let page = meta.members_page(room, after, 3).unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|m| m.0));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, all);
    assert_eq!(
        meta.members_page(room, 0, 100).unwrap().items,
        meta.members(room).unwrap()
    );
    assert!(matches!(
        meta.members_page(999_999, 0, 1),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn private_rooms_are_visible_to_members_only() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let lobby = meta.create_room("lobby", false, alice, 1).unwrap();
    let secret = meta.create_room("secret", true, alice, 2).unwrap();
    let ids = |rooms: Vec<Room>| rooms.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let visible = |user| ids(meta.visible_rooms(user, 0, 100).unwrap().items);

    assert_eq!(visible(alice), [lobby, secret]);
    assert_eq!(visible(bob), [lobby]);
    assert_eq!(ids(meta.rooms().unwrap()), [lobby, secret]);
    meta.add_member(secret, bob, Role::Member).unwrap();
    assert_eq!(visible(bob), [lobby, secret]);
    assert!(matches!(
        meta.visible_rooms(99, 0, 1),
        Err(Error::NotFound(_))
    ));

    assert!(
        meta.room_by_name("secret").unwrap().is_none(),
        "private: not by name"
    );
    assert_eq!(meta.room_by_name("LOBBY").unwrap().unwrap().id, lobby);
    let room = meta.room(secret).unwrap().unwrap();
    assert_eq!(
        (room.id, room.private, room.creator, room.created_ms),
        (secret, true, alice, 2)
    );
    assert_eq!(meta.room(secret).unwrap(), Some(room));
    assert_eq!(meta.room(99).unwrap(), None);
}

#[test]
fn membership_tables_stay_consistent() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("r", false, alice, 1).unwrap();
    assert_eq!(meta.members(room).unwrap(), [(alice, Role::Owner)]);
    assert_eq!(meta.rooms_of(alice).unwrap(), [room]);
    assert_eq!(meta.rooms_of(bob).unwrap(), Vec::<u64>::new());

    assert!(meta.add_member(room, bob, Role::Member).unwrap());
    assert!(!meta.add_member(room, bob, Role::Admin).unwrap());
    assert_eq!(meta.member_role(room, bob).unwrap(), Some(Role::Admin));
    assert_eq!(
        meta.members(room).unwrap(),
        [(alice, Role::Owner), (bob, Role::Admin)]
    );
    assert_eq!(meta.rooms_of(bob).unwrap(), [room]);

    let remove = MemberChange {
        role: Some(None),
        ..MemberChange::default()
    };
    let removed = |room, user| {
        meta.change_membership(room, user, user, 2, write(remove))
            .map(|(view, _)| view.target.role.is_some())
    };
    assert!(removed(room, bob).unwrap());
    assert!(!removed(room, bob).unwrap());
    assert_eq!(meta.member_role(room, bob).unwrap(), None);
    assert_eq!(meta.members(room).unwrap(), [(alice, Role::Owner)]);
    assert_eq!(meta.rooms_of(bob).unwrap(), Vec::<u64>::new());

    for result in [
        meta.add_member(99, bob, Role::Member),
        meta.add_member(room, 99, Role::Member),
        removed(99, bob),
        removed(room, 99),
    ] {
        assert!(matches!(result, Err(Error::NotFound(_))));
    }
    assert!(matches!(meta.member_role(99, bob), Err(Error::NotFound(_))));
    assert!(matches!(meta.members(99), Err(Error::NotFound(_))));
    assert!(matches!(meta.rooms_of(99), Err(Error::NotFound(_))));
}

#[test]
fn receipts_clamp_and_never_move_backwards() {
    let (_dir, meta) = fresh();
    let alice = user(&meta, "alice");
    let room = meta.create_room("r", false, alice, 1).unwrap();
    assert_eq!(meta.read_seq(room, alice).unwrap(), 0);
    assert_eq!(
        meta.mark_read(room, alice, 5).unwrap(),
        0,
        "clamped to last_seq 0"
    );

    meta.advance_last_seq(&[(room, 10)], false).unwrap();
    assert_eq!(meta.mark_read(room, alice, 5).unwrap(), 5);
    assert_eq!(
        meta.mark_read(room, alice, 3).unwrap(),
        5,
        "never backwards"
    );
    assert_eq!(meta.mark_read(room, alice, 50).unwrap(), 10, "clamped");
    assert_eq!(meta.read_seq(room, alice).unwrap(), 10);
    assert!(matches!(
        meta.mark_read(99, alice, 1),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        meta.mark_read(room, 99, 1),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(meta.read_seq(99, alice), Err(Error::NotFound(_))));

    meta.import_receipt(room, alice, 40).unwrap();
    meta.import_receipt(room, alice, 20).unwrap();
    assert_eq!(meta.receipts().unwrap(), [(room, alice, 40)]);
}

#[test]
fn markers_page_lists_members_with_their_receipts() {
    let (_dir, meta) = fresh();
    let (alice, bob, carol) = (
        user(&meta, "alice"),
        user(&meta, "bob"),
        user(&meta, "carol"),
    );
    let room = meta.create_room("r", false, alice, 1).unwrap();
    meta.add_member(room, bob, Role::Member).unwrap();
    meta.add_member(room, carol, Role::Member).unwrap();
    meta.advance_last_seq(&[(room, 10)], false).unwrap();
    meta.mark_read(room, alice, 7).unwrap();
    meta.mark_read(room, carol, 3).unwrap();

    let all = meta.markers_page(room, 0, 10).unwrap();
    assert_eq!(all.items, [(alice, 7), (bob, 0), (carol, 3)]);
    assert_eq!(all.next, None);
    let first = meta.markers_page(room, 0, 2).unwrap();
    assert_eq!(first.items, [(alice, 7), (bob, 0)]);
    assert_eq!(first.next, Some(bob));
    let rest = meta.markers_page(room, bob, 2).unwrap();
    assert_eq!(rest.items, [(carol, 3)]);
    assert_eq!(rest.next, None);
    assert!(meta
        .markers_page(room, u64::MAX, 2)
        .unwrap()
        .items
        .is_empty());

    // A former member's receipt stays stored but is not listed.
    let remove = MemberChange {
        role: Some(None),
        ..MemberChange::default()
    };
    meta.change_membership(room, carol, carol, 2, write(remove))
        .unwrap();
    assert_eq!(
        meta.markers_page(room, 0, 10).unwrap().items,
        [(alice, 7), (bob, 0)]
    );
    assert!(matches!(
        meta.markers_page(99, 0, 10),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn receipts_in_a_batch_have_their_own_outcomes() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("r", false, alice, 1).unwrap();
    let out = meta
        .mark_read_many(&[
            (room, alice, 5, 8), // raises last_seq to 8, stores 5
            (room, bob, 50, 8),  // clamped to 8
            (99, alice, 1, 1),   // unknown room
            (room, 99, 1, 8),    // unknown user
            (room, alice, 3, 8), // never backwards
        ])
        .unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(*out[0].as_ref().unwrap(), (5, true));
    assert_eq!(*out[1].as_ref().unwrap(), (8, true));
    assert!(matches!(out[2], Err(Error::NotFound(_))));
    assert!(matches!(out[3], Err(Error::NotFound(_))));
    assert_eq!(
        *out[4].as_ref().unwrap(),
        (5, false),
        "unchanged: not moved"
    );
    assert_eq!(meta.room(room).unwrap().unwrap().last_seq, 8);
    assert_eq!(meta.unread(room, alice).unwrap(), 3);
    assert_eq!(meta.unread(room, bob).unwrap(), 0);
    assert!(meta.mark_read_many(&[]).unwrap().is_empty());
}

#[test]
fn unread_follows_last_seq() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let a = meta.create_room("a", false, alice, 1).unwrap();
    let b = meta.create_room("b", false, bob, 1).unwrap();
    meta.add_member(b, alice, Role::Member).unwrap();

    meta.advance_last_seq(&[(a, 7), (b, 3), (999, 5)], false)
        .unwrap();
    assert_eq!(meta.unread(a, alice).unwrap(), 7);
    meta.mark_read(a, alice, 4).unwrap();
    assert_eq!(meta.unread(a, alice).unwrap(), 3);
    assert_eq!(meta.unread_all(alice).unwrap(), [(a, 3), (b, 3)]);
    assert_eq!(meta.unread_all(bob).unwrap(), [(b, 3)]);

    meta.advance_last_seq(&[(a, 9), (b, 1)], true).unwrap();
    assert_eq!(meta.unread(a, alice).unwrap(), 5);
    assert_eq!(
        meta.room(b).unwrap().unwrap().last_seq,
        3,
        "never decreases"
    );
    meta.advance_last_seq(&[], false).unwrap();
    assert!(matches!(meta.unread(99, alice), Err(Error::NotFound(_))));
    assert!(matches!(meta.unread_all(99), Err(Error::NotFound(_))));

    // A receipt above last_seq (possible after import) reads as 0 unread.
    meta.import_receipt(b, bob, 100).unwrap();
    assert_eq!(meta.unread(b, bob).unwrap(), 0);
}

/// JWT subjects' ids come from durably reserved blocks; a registered user
/// takes the next id in between; reopening skips what is left of the
/// block (a crash may have lost accounts that were handed those ids).
#[test]
fn subject_ids_come_from_reserved_blocks_that_reopening_skips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let reserved = |meta: &Meta| {
        meta.read(|txn| {
            let counters = txn.open_table(COUNTERS)?;
            let v = counters.get(USER_RESERVED_COUNTER)?.map(|g| g.value());
            Ok(v)
        })
        .unwrap()
    };
    {
        let meta = Meta::open(&path, 1 << 20).unwrap();
        assert_eq!(reserved(&meta), None);
        assert_eq!(user(&meta, "a"), 1);
        assert_eq!(reserved(&meta), Some(USER_ID_BLOCK_LEN));
        assert_eq!(meta.create_user("reg", PHC, 1).unwrap(), 2);
        assert_eq!(user(&meta, "b"), 3);
        assert_eq!(user(&meta, "a"), 1, "the same subject, the same id");
        for n in 4..=USER_ID_BLOCK_LEN {
            assert_eq!(user(&meta, &format!("s{n}")), n);
        }
        assert_eq!(reserved(&meta), Some(USER_ID_BLOCK_LEN));
        assert_eq!(user(&meta, "next"), USER_ID_BLOCK_LEN + 1);
        assert_eq!(reserved(&meta), Some(2 * USER_ID_BLOCK_LEN));
    }
    let meta = Meta::open(&path, 1 << 20).unwrap();
    assert_eq!(
        meta.external_user("next").unwrap().unwrap().id,
        USER_ID_BLOCK_LEN + 1
    );
    assert_eq!(user(&meta, "after"), 2 * USER_ID_BLOCK_LEN + 1);
    assert_eq!(
        meta.create_user("reg2", PHC, 1).unwrap(),
        2 * USER_ID_BLOCK_LEN + 2
    );
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let (alice, room) = {
        let meta = Meta::open(&path, 1 << 20).unwrap();
        let alice = user(&meta, "alice");
        let room = meta.create_room("r", true, alice, 1).unwrap();
        meta.create_session(&[9; 32], alice, DAY).unwrap();
        meta.advance_last_seq(&[(room, 12)], false).unwrap();
        meta.mark_read(room, alice, 8).unwrap();
        meta.close().unwrap();
        (alice, room)
    };
    let meta = Meta::open(&path, 1 << 20).unwrap();
    assert_eq!(meta.external_user("alice").unwrap().unwrap().id, alice);
    assert_eq!(meta.room(room).unwrap().unwrap().last_seq, 12);
    assert_eq!(meta.member_role(room, alice).unwrap(), Some(Role::Owner));
    assert_eq!(meta.rooms_of(alice).unwrap(), [room]);
    assert_eq!(meta.session(&[9; 32], 0).unwrap(), Some((alice, DAY)));
    assert_eq!(meta.unread(room, alice).unwrap(), 4);
    assert!(user(&meta, "bob") > alice, "counter survives");
}

#[test]
fn imports_bump_counters() {
    let (_dir, meta) = fresh();
    let imported = User {
        id: 10,
        name: "old".into(),
        created_ms: 5,
        password_hash: None,
    };
    meta.import_user(&imported).unwrap();
    assert_eq!(meta.user(10).unwrap(), Some(imported.clone()));
    assert!(matches!(
        meta.import_user(&imported),
        Err(Error::AlreadyExists(_))
    ));
    let renamed = User {
        name: "new".into(),
        ..imported.clone()
    };
    assert!(matches!(
        meta.import_user(&renamed),
        Err(Error::AlreadyExists(_))
    ));
    let zero = User {
        id: 0,
        name: "zero".into(),
        ..imported.clone()
    };
    assert!(matches!(
        meta.import_user(&zero),
        Err(Error::InvalidInput(_))
    ));
    let bad_hash = User {
        id: 11,
        name: "h".into(),
        password_hash: Some("x".into()),
        ..imported
    };
    assert!(matches!(
        meta.import_user(&bad_hash),
        Err(Error::InvalidInput(_))
    ));
    let next_user = user(&meta, "fresh");
    assert_eq!(next_user, 11);

    let room = Room {
        id: 42,
        name: "archive".into(),
        private: false,
        creator: 10,
        created_ms: 3,
        last_seq: 77,
    };
    meta.import_room(&room).unwrap();
    assert_eq!(meta.room(42).unwrap(), Some(room.clone()));
    assert!(matches!(
        meta.import_room(&room),
        Err(Error::AlreadyExists(_))
    ));
    let orphan = Room {
        id: 43,
        name: "orphan".into(),
        creator: 99,
        ..room
    };
    assert!(matches!(meta.import_room(&orphan), Err(Error::NotFound(_))));
    assert_eq!(meta.create_room("next", false, next_user, 4).unwrap(), 43);
    assert_eq!(
        meta.members(42).unwrap(),
        Vec::new(),
        "import adds no member"
    );
}

/// A decision that writes `change` whatever the state.
fn write(change: MemberChange) -> impl FnOnce(&MemberView) -> Result<MemberChange> {
    move |_| Ok(change)
}

#[test]
fn standing_changes_keep_the_invariants() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("r", true, alice, 1).unwrap();
    let invite = MemberChange {
        invite: Some(true),
        ..MemberChange::default()
    };
    let (view, _) = meta
        .change_membership(room, alice, bob, 5, write(invite))
        .unwrap();
    assert_eq!((view.private, view.target_exists), (true, true));
    assert_eq!(view.actor.role, Some(Role::Owner));
    assert!(meta.standing(room, bob).unwrap().invited);
    assert_eq!(
        meta.invites_of(bob).unwrap(),
        [Invite {
            room,
            by: alice,
            ts_ms: 5
        }]
    );
    // Accepting makes a member and ends the invitation.
    let accept = MemberChange {
        role: Some(Some(Role::Member)),
        ..MemberChange::default()
    };
    meta.change_membership(room, bob, bob, 6, write(accept))
        .unwrap();
    let s = meta.standing(room, bob).unwrap();
    assert_eq!(
        (s.role, s.invited, s.banned),
        (Some(Role::Member), false, false)
    );
    assert!(meta.invites_of(bob).unwrap().is_empty());
    // A ban removes the member.
    let ban = MemberChange {
        ban: Some(true),
        ..MemberChange::default()
    };
    meta.change_membership(room, alice, bob, 7, write(ban))
        .unwrap();
    let s = meta.standing(room, bob).unwrap();
    assert_eq!((s.role, s.banned), (None, true));
    let bans = meta.bans_page(room, 0, 10).unwrap();
    assert_eq!(
        bans.items,
        [Ban {
            user: bob,
            by: alice,
            ts_ms: 7
        }]
    );
    // What would break an invariant is refused, and writes nothing.
    let before = meta.standing(room, bob).unwrap();
    assert!(matches!(
        meta.change_membership(room, alice, bob, 8, write(invite)),
        Err(Error::Database(_))
    ));
    assert_eq!(
        meta.standing(room, bob).unwrap(),
        before,
        "a banned user is not invited"
    );
    let orphan = MemberChange {
        role: Some(None),
        ..MemberChange::default()
    };
    meta.change_membership(
        room,
        alice,
        bob,
        8,
        write(MemberChange {
            ban: Some(false),
            ..MemberChange::default()
        }),
    )
    .unwrap();
    meta.add_member(room, bob, Role::Member).unwrap();
    assert!(matches!(
        meta.change_membership(room, alice, alice, 9, write(orphan)),
        Err(Error::Database(_))
    ));
    assert_eq!(
        meta.member_role(room, alice).unwrap(),
        Some(Role::Owner),
        "the room keeps its owner"
    );
    // Nor may its owner be banned, or step down without handing on.
    let ban_owner = MemberChange {
        ban: Some(true),
        ..MemberChange::default()
    };
    let step_down = MemberChange {
        role: Some(Some(Role::Member)),
        actor_role: Some(Role::Admin),
        ..MemberChange::default()
    };
    for (actor, target, change) in [(bob, alice, ban_owner), (alice, bob, step_down)] {
        assert!(matches!(
            meta.change_membership(room, actor, target, 9, write(change)),
            Err(Error::Database(_))
        ));
        assert_eq!(meta.member_role(room, alice).unwrap(), Some(Role::Owner));
    }
    // The last one out may leave a room empty.
    meta.change_membership(room, bob, bob, 9, write(orphan))
        .unwrap();
    meta.change_membership(room, alice, alice, 9, write(orphan))
        .unwrap();
    assert!(meta.members(room).unwrap().is_empty());
    // A decision's own error writes nothing.
    let refused = meta.change_membership(room, alice, bob, 10, |_| {
        Err::<MemberChange, Error>(Error::InvalidInput("no".into()))
    });
    assert!(matches!(refused, Err(Error::InvalidInput(_))));
    assert_eq!(meta.standing(room, bob).unwrap(), Standing::default());
    assert!(matches!(
        meta.change_membership(99, alice, bob, 1, write(invite)),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_user_holds_a_bounded_number_of_invitations() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let invite = MemberChange {
        invite: Some(true),
        ..MemberChange::default()
    };
    let mut rooms = Vec::new();
    for i in 0..=INVITES_PER_USER_MAX {
        let room = meta.create_room(&format!("r{i}"), false, alice, 1).unwrap();
        meta.change_membership(room, alice, bob, 10 + i as u64, write(invite))
            .unwrap();
        assert_eq!(
            meta.invites_of(bob).unwrap().len(),
            (i + 1).min(INVITES_PER_USER_MAX)
        );
        rooms.push(room);
    }
    // The newest pushed the oldest out.
    let held: Vec<u64> = meta
        .invites_of(bob)
        .unwrap()
        .iter()
        .map(|i| i.room)
        .collect();
    assert_eq!(held.len(), INVITES_PER_USER_MAX);
    assert!(!held.contains(&rooms[0]) && held.contains(&rooms[INVITES_PER_USER_MAX]));
    assert!(!meta.standing(rooms[0], bob).unwrap().invited);
}

/// Whom a ban still reaches: a member who left is remembered.
#[test]
fn former_members_are_remembered() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("r", false, alice, 1).unwrap();
    let role = |r| MemberChange {
        role: Some(r),
        ..MemberChange::default()
    };
    let (view, _) = meta
        .change_membership(room, bob, bob, 2, write(role(Some(Role::Member))))
        .unwrap();
    assert!(!view.target_former);
    meta.change_membership(room, bob, bob, 3, write(role(None)))
        .unwrap();
    let (view, _) = meta
        .change_membership(room, alice, bob, 4, write(MemberChange::default()))
        .unwrap();
    assert!(view.target_former && view.target.role.is_none());
}

/// A file written before schema 2 (names as given, private rooms
/// indexed, creators as admins) is upgraded when it opens.
#[test]
fn schema_1_files_are_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let as_schema_1 =
        |meta: &Meta, names: &[(&str, u64)], rooms: &[(&str, u64)], admins: &[(u64, u64)]| {
            meta.write(|txn| {
                let mut n = txn.open_table(USER_NAMES)?;
                n.retain(|_, _| false)?;
                for &(name, id) in names {
                    n.insert(name, id)?;
                }
                let mut r = txn.open_table(ROOM_NAMES)?;
                r.retain(|_, _| false)?;
                for &(name, id) in rooms {
                    r.insert(name, id)?;
                }
                let mut m = txn.open_table(MEMBERS)?;
                for &(room, user) in admins {
                    m.insert((room, user), Role::Admin.to_u8())?;
                }
                txn.open_table(COUNTERS)?.remove(SCHEMA_COUNTER)?;
                Ok(())
            })
            .unwrap();
        };
    let (alice, ceo, lobby, secret) = {
        let meta = Meta::open(&path, 1 << 20).unwrap();
        let alice = meta.create_user("Alice", PHC, 1).unwrap();
        let ceo = meta.ensure_external_user("ceo", 1).unwrap();
        let lobby = meta.create_room("Lobby", false, alice, 1).unwrap();
        let secret = meta.create_room("secret", true, alice, 1).unwrap();
        as_schema_1(
            &meta,
            &[("Alice", alice), ("ceo", ceo)],
            &[("Lobby", lobby), ("secret", secret)],
            &[(lobby, alice), (secret, alice)],
        );
        meta.close().unwrap();
        (alice, ceo, lobby, secret)
    };
    let meta = Meta::open(&path, 1 << 20).unwrap();
    assert_eq!(meta.user_by_name("alice").unwrap().unwrap().id, alice);
    assert_eq!(meta.external_user("ceo").unwrap().unwrap().id, ceo);
    assert!(
        meta.user_by_name("ceo").unwrap().is_none(),
        "a subject is no name"
    );
    assert_eq!(meta.room_by_name("lobby").unwrap().unwrap().id, lobby);
    assert!(meta.room_by_name("secret").unwrap().is_none());
    assert_eq!(meta.member_role(lobby, alice).unwrap(), Some(Role::Owner));
    assert_eq!(meta.member_role(secret, alice).unwrap(), Some(Role::Owner));
    // Two names equal in lower case cannot be upgraded: named, unchanged.
    let bob = meta.create_user("bob", PHC, 1).unwrap();
    let other = meta.create_user("bob2", PHC, 1).unwrap();
    meta.write(|txn| {
        txn.open_table(USERS)?
            .insert(other, ("BOB", 1, Some(PHC)))?;
        Ok(())
    })
    .unwrap();
    as_schema_1(
        &meta,
        &[("Alice", alice), ("ceo", ceo), ("bob", bob), ("BOB", other)],
        &[("Lobby", lobby)],
        &[],
    );
    meta.close().unwrap();
    match Meta::open(&path, 1 << 20) {
        Err(Error::Database(m)) => assert!(m.contains(&format!("users {bob} and {other}")), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_id_filter_limits_the_ids_handed_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = IdFilter::new(|id| id % 3 == 2);
    let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20)
        .expect("open")
        .with_id_filter(Some(odd));
    let a = user(&meta, "a");
    let b = meta.create_user("b", PHC, 1).unwrap();
    let c = meta.reserve_user_id().unwrap();
    assert_eq!((a, b, c), (2, 5, 8));
    let r1 = meta.create_room("one", false, a, 1).unwrap();
    let r2 = meta.create_room("two", true, a, 1).unwrap();
    assert_eq!((r1, r2), (2, 5));
    // Replicated rows keep their ids, and the counter moves past them.
    let other = User {
        id: 10,
        name: "remote".into(),
        created_ms: 1,
        password_hash: Some(PHC.into()),
    };
    meta.replicate_user(&other).unwrap();
    assert_eq!(meta.reserve_user_id().unwrap(), 11);
}

#[test]
fn a_room_created_with_the_clusters_id_keeps_it_and_raises_the_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owned = IdFilter::new(|id| id % 3 == 2);
    let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20)
        .expect("open")
        .with_id_filter(Some(owned));
    let a = user(&meta, "a");
    meta.create_room_with_id(14, "given", false, a, 1).unwrap();
    assert_eq!(meta.room(14).unwrap().unwrap().name, "given");
    assert_eq!(
        meta.members(14).unwrap(),
        vec![(a, Role::Owner)],
        "the creator owns it"
    );
    // Ids handed out here later are above it.
    assert_eq!(meta.create_room("next", false, a, 1).unwrap(), 17);
    // An id this node may not hand out, id 0, a taken id, a taken public
    // name, an unknown creator: refused, nothing written.
    let refused = [
        (15, "x", a),
        (0, "x", a),
        (14, "x", a),
        (20, "given", a),
        (20, "x", 999),
    ];
    for (id, name, creator) in refused {
        let e = meta.create_room_with_id(id, name, false, creator, 1);
        assert!(e.is_err(), "{id} {name} {creator}: {e:?}");
    }
    assert!(matches!(
        meta.create_room_with_id(15, "x", false, a, 1),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.create_room_with_id(14, "x", false, a, 1),
        Err(Error::AlreadyExists(_))
    ));
    assert!(meta.room(20).unwrap().is_none());
    assert_eq!(meta.create_room("after", false, a, 1).unwrap(), 20);
}

#[test]
fn replicated_users_and_sessions_are_upserts() {
    let (_dir, meta) = fresh();
    let mut alice = User {
        id: 7,
        name: "Alice".into(),
        created_ms: 5,
        password_hash: Some(PHC.into()),
    };
    meta.replicate_user(&alice).unwrap();
    meta.replicate_user(&alice).unwrap();
    assert_eq!(meta.user_by_name("alice").unwrap(), Some(alice.clone()));
    // A password change is the same record with another hash.
    let new_hash = PHC.replace("c2FsdHNhbHQ", "b3RoZXJzYWx0");
    alice.password_hash = Some(new_hash.clone());
    meta.replicate_user(&alice).unwrap();
    assert_eq!(meta.user(7).unwrap().unwrap().password_hash, Some(new_hash));
    // The cluster and this file disagreeing is an error, and changes nothing.
    let thief = User {
        id: 8,
        name: "ALICE".into(),
        ..alice.clone()
    };
    assert!(matches!(
        meta.replicate_user(&thief),
        Err(Error::Database(_))
    ));
    let renamed = User {
        name: "mallory".into(),
        ..alice.clone()
    };
    assert!(matches!(
        meta.replicate_user(&renamed),
        Err(Error::Database(_))
    ));
    assert!(meta.user(8).unwrap().is_none());
    assert!(meta.user_by_name("mallory").unwrap().is_none());
    // A session may arrive before its user; replaying it replaces it.
    let (h1, h2) = ([1u8; 32], [2u8; 32]);
    meta.replicate_session(&h1, 99, 1_000).unwrap();
    meta.replicate_session(&h1, 99, 2_000).unwrap();
    meta.replicate_session(&h2, 99, 3_000).unwrap();
    assert_eq!(meta.session(&h1, 1_500).unwrap(), Some((99, 2_000)));
    let mut all = meta.sessions_of(99, None).unwrap();
    all.sort();
    assert_eq!(all, vec![(h1, 2_000), (h2, 3_000)]);
    assert_eq!(meta.sessions_of(99, Some(&h1)).unwrap(), vec![(h2, 3_000)]);
    assert!(meta.sessions_of(7, None).unwrap().is_empty());
}

/// A batch of the cluster's changes is applied in its order, in one
/// transaction: all of it, or (one change disagreeing) none of it.
#[test]
fn a_replicated_batch_is_applied_in_order_all_or_nothing() {
    let (_dir, meta) = fresh();
    let user = |id: u64, name: &str| User {
        id,
        name: name.into(),
        created_ms: 1,
        password_hash: Some(PHC.into()),
    };
    let (h1, h2) = ([1u8; 32], [2u8; 32]);
    let session = |token_hash, expires_ms| Replicated::Session {
        token_hash,
        user: 3,
        expires_ms,
    };
    meta.replicate_batch(&[
        Replicated::User(user(3, "ann")),
        session(h1, 1_000),
        session(h2, 1_000),
        // Later changes of one key win: its order is kept.
        session(h1, 5_000),
        Replicated::SessionEnded(h2),
    ])
    .unwrap();
    assert_eq!(meta.user_by_name("ann").unwrap(), Some(user(3, "ann")));
    assert_eq!(meta.session(&h1, 2_000).unwrap(), Some((3, 5_000)));
    assert_eq!(meta.session(&h2, 0).unwrap(), None);
    // A name another user holds here: nothing of the batch is written.
    let bad = meta.replicate_batch(&[
        Replicated::SessionEnded(h1),
        Replicated::User(user(4, "bob")),
        Replicated::User(user(5, "ANN")),
    ]);
    assert!(matches!(bad, Err(Error::Database(_))), "{bad:?}");
    assert_eq!(meta.session(&h1, 2_000).unwrap(), Some((3, 5_000)));
    assert!(meta.user(4).unwrap().is_none());
    // An invalid record is refused before anything is written.
    let invalid = meta.replicate_batch(&[
        Replicated::User(user(6, "cid")),
        Replicated::User(user(0, "zero")),
    ]);
    assert!(
        matches!(invalid, Err(Error::InvalidInput(_))),
        "{invalid:?}"
    );
    assert!(meta.user(6).unwrap().is_none());
    meta.replicate_batch(&[]).unwrap();
}

#[test]
fn the_server_acts_as_an_owner_and_holds_no_standing() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("r", false, alice, 1).unwrap();
    meta.add_member(room, bob, Role::Member).unwrap();
    let ban = MemberChange {
        ban: Some(true),
        ..MemberChange::default()
    };
    let (view, _) = meta
        .change_membership(room, SERVER_USER, bob, 5, write(ban))
        .unwrap();
    assert_eq!(view.actor.role, Some(Role::Owner), "an owner's view");
    assert_eq!(view.target.role, Some(Role::Member));
    assert_eq!(
        meta.bans_page(room, 0, 10).unwrap().items,
        [Ban {
            user: bob,
            by: SERVER_USER,
            ts_ms: 5
        }]
    );
    assert!(meta
        .members(room)
        .unwrap()
        .iter()
        .all(|(u, _)| *u != SERVER_USER));
    // It never takes a role (handing ownership on would give it one), and
    // the room keeps its owner.
    let hand_on = MemberChange {
        role: Some(Some(Role::Owner)),
        actor_role: Some(Role::Admin),
        ..MemberChange::default()
    };
    assert!(matches!(
        meta.change_membership(room, SERVER_USER, alice, 6, write(hand_on)),
        Err(Error::Database(_))
    ));
    assert_eq!(meta.member_role(room, alice).unwrap(), Some(Role::Owner));
    assert!(meta
        .members(room)
        .unwrap()
        .iter()
        .all(|(u, _)| *u != SERVER_USER));
    // A missing room is still missing.
    assert!(matches!(
        meta.change_membership(99, SERVER_USER, bob, 7, write(ban)),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_deleted_room_leaves_no_row_and_its_id_is_never_taken_again() {
    let (_dir, meta) = fresh();
    let [alice, bob, carol, dave, eve] =
        ["alice", "bob", "carol", "dave", "eve"].map(|n| user(&meta, n));
    let lobby = meta.create_room("Lobby", false, alice, 1).unwrap();
    let other = meta.create_room("other", true, alice, 1).unwrap();
    let change = |room, actor, target, c: MemberChange| {
        meta.change_membership(room, actor, target, 2, write(c))
            .unwrap();
    };
    let role = |r| MemberChange {
        role: Some(r),
        ..MemberChange::default()
    };
    let invite = MemberChange {
        invite: Some(true),
        ..MemberChange::default()
    };
    let ban = MemberChange {
        ban: Some(true),
        ..MemberChange::default()
    };
    for room in [lobby, other] {
        change(room, bob, bob, role(Some(Role::Member)));
        change(room, alice, carol, invite);
    }
    change(lobby, alice, dave, ban);
    change(lobby, eve, eve, role(Some(Role::Member)));
    change(lobby, eve, eve, role(None));
    meta.advance_last_seq(&[(lobby, 9), (other, 4)], true)
        .unwrap();
    meta.mark_read(lobby, bob, 5).unwrap();
    meta.mark_read(other, bob, 3).unwrap();
    meta.set_retention(lobby, 100, 0).unwrap();
    meta.advance_low_seqs(&[(lobby, 10)]).unwrap();

    let (room, members) = meta.delete_room(lobby, 50).unwrap();
    assert_eq!(
        (room.id, room.name.as_str(), room.last_seq),
        (lobby, "Lobby", 9)
    );
    assert_eq!(members, [(alice, Role::Owner), (bob, Role::Member)]);
    assert!(meta.room_deleted(lobby).unwrap() && !meta.room_deleted(other).unwrap());
    assert_eq!(meta.room(lobby).unwrap(), None);
    assert_eq!(meta.room_by_name("lobby").unwrap(), None);
    assert!(matches!(meta.members(lobby), Err(Error::NotFound(_))));
    assert!(matches!(meta.standing(lobby, bob), Err(Error::NotFound(_))));
    assert!(matches!(
        meta.delete_room(lobby, 51),
        Err(Error::NotFound(_))
    ));
    // The mirrors lost exactly the deleted room's rows.
    assert_eq!(meta.rooms_of(bob).unwrap(), [other]);
    assert_eq!(meta.rooms_of(alice).unwrap(), [other]);
    let invites: Vec<u64> = meta
        .invites_of(carol)
        .unwrap()
        .iter()
        .map(|i| i.room)
        .collect();
    assert_eq!(invites, [other]);
    assert_eq!(meta.receipts().unwrap(), [(other, bob, 3)]);
    assert_eq!(meta.read_seq(other, bob).unwrap(), 3);
    assert!(meta.bans_page(other, 0, 10).unwrap().items.is_empty());
    // Its history stays retired; its name is free, its id is not.
    assert!(meta
        .retention_rows()
        .unwrap()
        .contains(&(lobby, 10, 100, 0)));
    let room_ids = || {
        meta.rooms()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(room_ids(), [other]);
    let again = meta.create_room("LOBBY", false, alice, 60).unwrap();
    assert!(again > other);
    assert!(matches!(
        meta.create_room_with_id(lobby, "x", false, alice, 61),
        Err(Error::AlreadyExists(_))
    ));
    let mut imported = room.clone();
    imported.name = "y".into();
    assert!(matches!(
        meta.import_room(&imported),
        Err(Error::AlreadyExists(_))
    ));
    // A private room (whose name is not indexed) goes the same way.
    assert_eq!(meta.delete_room(other, 70).unwrap().1.len(), 2);
    assert!(meta.rooms_of(bob).unwrap().is_empty() && meta.invites_of(carol).unwrap().is_empty());
    assert!(meta.receipts().unwrap().is_empty());
    // Only the room made since is left.
    assert_eq!(room_ids(), [again]);
}

#[test]
fn the_member_feed_numbers_joins_and_leaves_only_while_on() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let quiet = meta.create_room("quiet", false, alice, 1).unwrap();
    assert!(meta.add_member(quiet, bob, Role::Member).unwrap());
    assert_eq!(meta.member_feed_end().unwrap(), 0, "off: nothing written");

    meta.set_member_feed(true);
    let room = meta.create_room("r", false, alice, 2).unwrap();
    assert!(meta.add_member(room, bob, Role::Member).unwrap());
    // A role change is neither a join nor a leave.
    assert!(!meta.add_member(room, bob, Role::Admin).unwrap());
    let leave = MemberChange {
        role: Some(None),
        ..MemberChange::default()
    };
    meta.change_membership(room, bob, bob, 7, write(leave))
        .unwrap();
    let ban = MemberChange {
        ban: Some(true),
        ..MemberChange::default()
    };
    // Banning someone who is not a member is no leave.
    meta.change_membership(room, alice, bob, 8, write(ban))
        .unwrap();
    meta.change_membership(quiet, alice, bob, 9, write(ban))
        .unwrap();
    let got: Vec<_> = meta
        .member_feed_page(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.room, e.user, e.by, e.joined))
        .collect();
    assert_eq!(
        got,
        [
            (1, room, alice, alice, true),
            (2, room, bob, SERVER_USER, true),
            (3, room, bob, bob, false),
            (4, quiet, bob, alice, false),
        ]
    );
    assert_eq!(meta.member_feed_end().unwrap(), 4);
    assert_eq!(meta.member_feed_page(2, 1).unwrap()[0].id, 3);
    assert!(meta.member_feed_page(4, 10).unwrap().is_empty());

    meta.save_feed_cursors("hook", &[(0, 7 << 32 | 32), (MEMBER_FEED_STREAM, 3)])
        .unwrap();
    meta.save_feed_cursors("other", &[(0, 9 << 32 | 32), (1, 5 << 32 | 64)])
        .unwrap();
    assert_eq!(meta.feed_cursors().unwrap().len(), 4);
    meta.drop_feed_cursors("hook").unwrap();
    assert_eq!(
        meta.feed_cursors().unwrap(),
        [
            ("other".to_string(), 0, 9 << 32 | 32),
            ("other".to_string(), 1, 5 << 32 | 64)
        ]
    );
}

#[test]
fn a_pair_has_one_direct_message_room_found_from_either_side() {
    let (dir, meta) = fresh();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| user(&meta, n));
    let lobby = meta.create_room("lobby", false, alice, 1).unwrap();
    let opened = meta.open_dm(None, bob, alice, 5).unwrap();
    let room = opened.room;
    assert_eq!(
        (opened.created, opened.member),
        (true, true),
        "made, with the opener in it"
    );
    // The other is invited by the opener, not put in the room.
    assert_eq!(meta.members(room).unwrap(), [(bob, Role::Member)]);
    let invites = meta.invites_of(alice).unwrap();
    assert_eq!(
        (invites.len(), invites[0].room, invites[0].by),
        (1, room, bob)
    );
    let again = meta.open_dm(None, alice, bob, 6).unwrap();
    assert_eq!(
        (again.room, again.created, again.member),
        (room, false, false),
        "found from the other side, who is not in it yet"
    );
    let r = meta.room(room).unwrap().unwrap();
    let name = format!("dm-{alice}-{bob}");
    assert_eq!(
        (r.name.as_str(), r.private, r.creator),
        (name.as_str(), true, bob)
    );
    assert_eq!(meta.dm_pair(room).unwrap(), Some((alice, bob)));
    assert_eq!(meta.dm_pair(lobby).unwrap(), None);
    assert_eq!(meta.dm_between(alice, bob).unwrap(), Some(room));
    assert_eq!(meta.dm_between(bob, alice).unwrap(), Some(room));
    assert_eq!(meta.dm_between(alice, carol).unwrap(), None);
    assert!(matches!(
        meta.open_dm(None, alice, alice, 7),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.open_dm(None, alice, 99, 7),
        Err(Error::NotFound(_))
    ));
    // Not among the rooms anyone lists; each of the two lists it.
    let listed: Vec<u64> = meta
        .visible_rooms(alice, 0, 10)
        .unwrap()
        .items
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [lobby]);
    let carols = meta.open_dm(None, carol, alice, 8).unwrap().room;
    let others = |user, with_left| -> Vec<(u64, u64, bool, bool)> {
        meta.dms_of(user, 0, 10, with_left)
            .unwrap()
            .items
            .iter()
            .map(|d| (d.other, d.room.id, d.member, d.invited))
            .collect()
    };
    assert_eq!(
        others(alice, false),
        [(bob, room, false, true), (carol, carols, false, true)]
    );
    assert_eq!(others(bob, false), [(alice, room, true, false)]);
    let page = meta.dms_of(alice, 0, 1, false).unwrap();
    assert_eq!(page.next, Some(bob), "a page of one has a next");
    assert_eq!(
        meta.dms_of(alice, bob, 1, false).unwrap().items[0].other,
        carol
    );
    // Alice accepts (a join), then both are members, with no owner.
    let join = MemberChange {
        role: Some(Some(Role::Member)),
        ..MemberChange::default()
    };
    meta.change_membership(room, alice, alice, 9, write(join))
        .unwrap();
    assert_eq!(
        meta.members(room).unwrap(),
        [(alice, Role::Member), (bob, Role::Member)]
    );
    assert!(meta
        .invites_of(alice)
        .unwrap()
        .iter()
        .all(|i| i.room != room));
    // A member who left: listed only when asked, and opening finds them out.
    let leave = MemberChange {
        role: Some(None),
        ..MemberChange::default()
    };
    meta.change_membership(room, bob, bob, 9, write(leave))
        .unwrap();
    assert!(others(bob, false).is_empty());
    assert_eq!(others(bob, true), [(alice, room, false, false)]);
    let back = meta.open_dm(None, bob, alice, 10).unwrap();
    assert_eq!((back.room, back.created, back.member), (room, false, false));
    // Only the two have a standing there, whatever an import says.
    assert!(matches!(
        meta.add_member(room, carol, Role::Member),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.add_member(room, bob, Role::Owner),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.import_invite(room, carol, alice, 10),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        meta.import_ban(room, bob, alice, 10),
        Err(Error::InvalidInput(_))
    ));
    // The pair stays a pair across a reopen and a deletion (which frees
    // it for a new room).
    let path = dir.path().join("meta.redb");
    meta.close().unwrap();
    let meta = Meta::open(&path, 1 << 20).unwrap();
    assert_eq!(
        meta.dm_pairs().unwrap(),
        [(room, (alice, bob)), (carols, (alice, carol))]
    );
    assert_eq!(
        meta.ensure_owners().unwrap(),
        0,
        "a direct message gets no owner"
    );
    let (_, members) = meta.delete_room(room, 11).unwrap();
    assert_eq!(members, [(alice, Role::Member)]);
    assert_eq!(meta.dm_between(alice, bob).unwrap(), None);
    assert_eq!(meta.dm_pair(room).unwrap(), None);
    let fresh_room = meta.open_dm(None, alice, bob, 12).unwrap();
    assert!(fresh_room.created && fresh_room.room > carols);
    let (_d2, other) = fresh();
    for n in ["alice", "bob"] {
        user(&other, n);
    }
    let copy = other.create_room(&name, true, alice, 1).unwrap();
    other.import_dm(copy, (bob, alice)).unwrap();
    assert_eq!(other.dm_between(alice, bob).unwrap(), Some(copy));
    assert!(matches!(
        other.import_dm(copy, (alice, bob)),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        other.import_dm(copy, (alice, alice)),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_direct_message_takes_the_clusters_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = IdFilter::new(|id| id % 2 == 1);
    let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20)
        .expect("open")
        .with_id_filter(Some(odd));
    let [alice, bob] = ["alice", "bob"].map(|n| user(&meta, n));
    assert!(matches!(
        meta.open_dm(Some(8), alice, bob, 1),
        Err(Error::InvalidInput(_))
    ));
    let opened = meta.open_dm(Some(9), alice, bob, 1).unwrap();
    assert_eq!((opened.room, opened.created), (9, true));
    // A second claim of the pair finds the room made by the first.
    assert_eq!(meta.open_dm(Some(11), bob, alice, 1).unwrap().room, 9);
    assert_eq!(
        meta.create_room("next", false, alice, 1).unwrap(),
        11,
        "the counter moved past 9"
    );
}

#[test]
fn schema_2_files_gain_the_direct_message_tables_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let (alice, bob, room) = {
        let meta = Meta::open(&path, 1 << 20).unwrap();
        let alice = meta.create_user("Alice", PHC, 1).unwrap();
        let bob = meta.create_user("bob", PHC, 1).unwrap();
        let room = meta.create_room("imported", false, alice, 1).unwrap();
        // As a schema 2 file may hold: a room imported without an owner,
        // and no direct-message tables.
        meta.write(|txn| {
            let mut members = txn.open_table(MEMBERS)?;
            members.insert((room, alice), Role::Member.to_u8())?;
            members.insert((room, bob), Role::Member.to_u8())?;
            txn.open_table(COUNTERS)?.insert(SCHEMA_COUNTER, 2)?;
            txn.delete_table(DMS)?;
            txn.delete_table(DM_ROOMS)?;
            Ok(())
        })
        .unwrap();
        meta.close().unwrap();
        (alice, bob, room)
    };
    let meta = Meta::open(&path, 1 << 20).unwrap();
    let schema = meta
        .read(|txn| {
            Ok(txn
                .open_table(COUNTERS)?
                .get(SCHEMA_COUNTER)?
                .map(|g| g.value()))
        })
        .unwrap();
    assert_eq!(schema, Some(SCHEMA));
    assert_eq!(
        meta.members(room).unwrap(),
        [(alice, Role::Member), (bob, Role::Member)],
        "the 1 -> 2 steps (which name owners) do not run again"
    );
    assert_eq!(meta.user_by_name("ALICE").unwrap().unwrap().id, alice);
    let dm = meta.open_dm(None, alice, bob, 2).unwrap();
    assert!(dm.created, "the new tables work");
}

#[test]
fn users_are_found_by_the_prefixes_of_their_names_words() {
    let (_dir, meta) = fresh();
    let ada = meta.create_user("ada_lovelace", PHC, 1).unwrap();
    let alan = meta.create_user("alan.turing", PHC, 1).unwrap();
    let grace = user(&meta, "grace-hopper");
    let adam = meta.create_user("adam", PHC, 1).unwrap();
    meta.set_profile(grace, "Amazing Grace Hopper", "compiling", 5)
        .unwrap();
    meta.set_profile(adam, "Ada Admirer", "", 6).unwrap();
    let ids = |q: &str| -> Vec<u64> {
        let page = meta.search_users(q, None, 50).unwrap();
        assert!(page.next.is_none(), "{q}: one page");
        page.users.iter().map(|p| p.user).collect()
    };
    // Any word of the name or the display name, by prefix, in any case;
    // each user once however many of their words match.
    assert_eq!(ids("ada"), [ada, adam]);
    assert_eq!(ids("AD"), [ada, adam]);
    assert_eq!(ids("a"), [ada, adam, alan, grace]);
    assert_eq!(ids("tur"), [alan]);
    assert_eq!(ids("grace"), [grace]);
    assert_eq!(ids("amazing"), [grace], "the display name is searched");
    // Every word of the query must match a word of the user.
    assert_eq!(ids("ada love"), [ada]);
    assert_eq!(ids("love ada"), [ada]);
    assert_eq!(ids("hop gr"), [grace]);
    assert!(ids("ada turing").is_empty());
    assert!(ids("zebra").is_empty());
    assert!(matches!(
        meta.search_users(" -_. ", None, 5),
        Err(Error::InvalidInput(_))
    ));
    // A changed display name drops its old words.
    meta.set_profile(adam, "", "", 7).unwrap();
    assert_eq!(ids("admirer"), Vec::<u64>::new());
    assert_eq!(ids("ada"), [ada, adam], "adam by his name alone now");
    let p = meta.profile(grace).unwrap().unwrap();
    assert_eq!(
        (
            p.name.as_str(),
            p.external,
            p.display_name.as_str(),
            p.status.as_str(),
            p.updated_ms
        ),
        ("grace-hopper", true, "Amazing Grace Hopper", "compiling", 5)
    );
    assert_eq!(meta.profile(99).unwrap(), None);
    // Bounds: lengths and control characters.
    let long = "x".repeat(DISPLAY_NAME_BYTES_MAX + 1);
    for (display, status) in [(long.as_str(), ""), ("a\nb", ""), ("", "tab\there")] {
        assert!(matches!(
            meta.set_profile(ada, display, status, 8),
            Err(Error::InvalidInput(_))
        ));
    }
    assert!(matches!(
        meta.set_profile(99, "x", "", 8),
        Err(Error::NotFound(_))
    ));
    // Pages: each user once across pages, in order, whatever the length.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = meta.search_users("a", after.as_ref(), 1).unwrap();
        all.extend(page.users.iter().map(|p| p.user));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(all, [ada, adam, alan, grace], "the same users as one page");
}

#[test]
fn the_word_index_follows_a_model_of_names_and_display_names() {
    // A plain reference: every user's words, checked against the index by
    // every prefix of every word, after random profile changes.
    use std::collections::BTreeMap;
    let (_dir, meta) = fresh();
    let mut model: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let pool = [
        "ann",
        "anna",
        "bo",
        "bob",
        "émile",
        "zoë",
        "x1",
        "Ann-Marie",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..24 {
        let name = format!(
            "{}_{i}",
            pool[next() as usize % pool.len()].replace(['é', 'ë'], "e")
        );
        let id = meta.create_user(&name, PHC, 1).unwrap();
        model.insert(id, (name, String::new()));
    }
    for _ in 0..60 {
        let ids: Vec<u64> = model.keys().copied().collect();
        let id = ids[next() as usize % ids.len()];
        let display = format!(
            "{} {}",
            pool[next() as usize % pool.len()],
            pool[next() as usize % pool.len()]
        );
        meta.set_profile(id, &display, "", 2).unwrap();
        model.get_mut(&id).unwrap().1 = display;
    }
    for q in [
        "a",
        "an",
        "ann",
        "anna",
        "b",
        "bo",
        "bob",
        "é",
        "émi",
        "zo",
        "x",
        "marie",
        "ann marie",
        "bo x",
    ] {
        let wanted = words_of(q, "");
        let expected: Vec<u64> = model
            .iter()
            .filter(|(_, (n, d))| {
                let theirs = words_of(n, d);
                wanted
                    .iter()
                    .all(|w| theirs.iter().any(|t| t.starts_with(w.as_str())))
            })
            .map(|(id, _)| *id)
            .collect();
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = meta.search_users(q, after.as_ref(), 3).unwrap();
            found.extend(page.users.iter().map(|p| p.user));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut sorted = found.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), found.len(), "{q}: nobody twice");
        assert_eq!(sorted, expected, "{q}");
    }
}

#[test]
fn words_fold_case_and_accents_and_stay_within_their_bounds() {
    // Case character by character, accents composed or not, and a final
    // sigma, as a person typing would expect.
    assert_eq!(words_of("ΟΔΥΣΣΕΥΣ", ""), ["οδυσσευσ"]);
    assert_eq!(query_words("ΟΔΥΣ"), ["οδυσ"]);
    assert_eq!(words_of("İlker", ""), ["ilker"]);
    assert_eq!(
        words_of("\u{e9}mile", "E\u{301}MILE zo\u{eb}"),
        ["emile", "zoe"]
    );
    // Cut at 32 bytes on a character boundary; at most 8 words a user.
    let long = "é".repeat(40);
    assert_eq!(words_of(&long, ""), ["e".repeat(32)]);
    let long = "ж".repeat(40);
    assert_eq!(words_of(&long, "")[0].len(), 32);
    let many = "a b c d e f g h i j";
    assert_eq!(words_of(many, "").len(), WORDS_PER_USER_MAX);
    assert_eq!(query_words(many).len(), 10, "a query's words are all kept");
    let (_dir, meta) = fresh();
    let grace = meta.create_user("grace", PHC, 1).unwrap();
    meta.set_profile(grace, "Émile Zoë Ödön", "", 2).unwrap();
    for q in ["emi", "ÉMI", "zoe", "odon", "Ödön", "E\u{301}mile"] {
        let found = meta.search_users(q, None, 5).unwrap().users;
        assert_eq!(found.len(), 1, "{q}");
    }
    assert!(matches!(
        meta.search_users(many, None, 5),
        Err(Error::InvalidInput(_))
    ));
    // Direction and zero-width characters are refused in names shown.
    for bad in ["ad\u{202E}min", "a\u{200B}b", "\u{2066}x"] {
        assert!(matches!(
            meta.set_profile(grace, bad, "", 3),
            Err(Error::InvalidInput(_))
        ));
    }
}

#[test]
fn a_page_reads_a_bounded_number_of_rows_and_says_where_to_go_on() {
    let (_dir, meta) = fresh();
    // 5,000 users share the word `common`; only the last has `rare`.
    let users: Vec<User> = (1..=5000)
        .map(|i| User {
            id: i,
            name: format!("common_{i}"),
            created_ms: 1,
            password_hash: None,
        })
        .collect();
    meta.import_users(&users).unwrap();
    meta.set_profile(5000, "rare", "", 2).unwrap();
    let first = meta.search_users("common rare", None, 10).unwrap();
    assert!(first.users.is_empty(), "nothing in the first rows read");
    let next = first.next.expect("a short page says where to go on");
    assert_eq!(
        (next.word.as_str(), next.user),
        ("common", SEARCH_SCAN_ROWS_MAX as u64)
    );
    let second = meta.search_users("common rare", Some(&next), 10).unwrap();
    assert_eq!(
        second.users.iter().map(|p| p.user).collect::<Vec<_>>(),
        [5000]
    );
    assert!(second.next.is_none());
}

#[test]
fn edits_keep_what_they_do_not_name_and_a_profile_may_come_before_its_user() {
    let (_dir, meta) = fresh();
    let ada = meta.create_user("ada", PHC, 1).unwrap();
    meta.set_profile(ada, "Countess", "busy", 2).unwrap();
    let edit = |d, s| crate::meta::ProfileEdit {
        display_name: d,
        status: s,
        avatar: None,
    };
    let p = meta.edit_profile(ada, &edit(None, Some("")), 3).unwrap();
    assert_eq!(
        (p.display_name.as_str(), p.status.as_str(), p.updated_ms),
        ("Countess", "", 3)
    );
    let p = meta
        .edit_profile(ada, &edit(Some("Lady Ada"), None), 4)
        .unwrap();
    assert_eq!(
        (p.display_name.as_str(), p.status.as_str()),
        ("Lady Ada", "")
    );
    assert_eq!(meta.profile(ada).unwrap().unwrap(), p);
    assert!(matches!(
        meta.edit_profile(99, &edit(None, None), 5),
        Err(Error::NotFound(_))
    ));
    // A node catching up may apply a profile before its user: the user's
    // display name is found once the user arrives.
    let profile = Replicated::Profile {
        user: 7,
        display_name: "Early Bird".into(),
        status: String::new(),
        updated_ms: 6,
        avatar: None,
    };
    meta.replicate_batch(std::slice::from_ref(&profile))
        .unwrap();
    assert!(meta
        .search_users("early", None, 5)
        .unwrap()
        .users
        .is_empty());
    let user = User {
        id: 7,
        name: "late".into(),
        created_ms: 1,
        password_hash: None,
    };
    meta.replicate_batch(&[Replicated::User(user)]).unwrap();
    let found = meta.search_users("early bird", None, 5).unwrap().users;
    assert_eq!(
        (found.len(), found[0].display_name.as_str()),
        (1, "Early Bird")
    );
}

#[test]
fn schema_3_files_gain_the_word_index_of_every_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let meta = Meta::open(&path, 1 << 20).unwrap();
        let ada = meta.create_user("ada_lovelace", PHC, 1).unwrap();
        meta.set_profile(ada, "Countess", "", 2).unwrap();
        meta.write(|txn| {
            txn.delete_table(NAME_WORDS)?;
            txn.open_table(COUNTERS)?.insert(SCHEMA_COUNTER, 3)?;
            Ok(())
        })
        .unwrap();
        meta.close().unwrap();
    }
    let meta = Meta::open(&path, 1 << 20).unwrap();
    for q in ["love", "countess", "ada"] {
        assert_eq!(meta.search_users(q, None, 5).unwrap().users.len(), 1, "{q}");
    }
}

#[test]
fn uploads_charge_their_owner_within_the_quota() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let up = |id: u128, owner: u64, bytes: u64, thumb: u64| crate::meta::Upload {
        id,
        owner,
        bytes,
        created_ms: 5,
        pending: 0,
        content_type: "image/png".into(),
        name: "cat.png".into(),
        sha256: [7; 32],
        width: 640,
        height: 480,
        thumb_bytes: thumb,
    };
    meta.add_upload(&up(1, alice, 6000, 1000), 11_096).unwrap();
    assert_eq!(meta.upload_usage(alice).unwrap(), 7000);
    assert_eq!(meta.upload(1).unwrap(), Some(up(1, alice, 6000, 1000)));
    // Over the quota: refused, nothing written.
    assert!(matches!(
        meta.add_upload(&up(2, alice, 4097, 0), 11_096),
        Err(Error::TooMany(_))
    ));
    assert_eq!(meta.upload(2).unwrap(), None);
    meta.add_upload(&up(2, alice, 10, 0), 11_096).unwrap();
    assert_eq!(
        meta.upload_usage(alice).unwrap(),
        7000 + crate::meta::UPLOAD_CHARGE_BYTES_MIN,
        "a tiny file counts the minimum: exactly the quota"
    );
    meta.add_upload(&up(3, bob, 10_000, 0), 10_000).unwrap();
    assert_eq!(meta.upload_usage(bob).unwrap(), 10_000, "each their own");
    assert!(matches!(
        meta.add_upload(&up(3, bob, 1, 0), 20_000),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        meta.add_upload(&up(4, 999, 1, 0), 20_000),
        Err(Error::NotFound(_))
    ));
    let mut long = up(5, bob, 1, 0);
    long.name = "n".repeat(crate::meta::UPLOAD_NAME_BYTES_MAX + 1);
    assert!(matches!(
        meta.add_upload(&long, 1000),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(meta.upload_ids().unwrap(), [1, 2, 3]);
    // Removing frees what it charged.
    assert_eq!(
        meta.remove_upload(1).unwrap(),
        Some(up(1, alice, 6000, 1000))
    );
    assert_eq!(meta.remove_upload(1).unwrap(), None);
    assert_eq!(
        meta.upload_usage(alice).unwrap(),
        crate::meta::UPLOAD_CHARGE_BYTES_MIN
    );
    meta.remove_upload(2).unwrap();
    assert_eq!(meta.upload_usage(alice).unwrap(), 0);
    assert_eq!(meta.upload_ids().unwrap(), [3]);
}

#[test]
fn messages_hold_uploads_and_letting_go_twice_changes_nothing() {
    let (_dir, meta) = fresh();
    let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
    let room = meta.create_room("lobby", false, alice, 1).unwrap();
    let add = |id: u128, owner: u64, created_ms: u64| {
        let up = crate::meta::Upload {
            id,
            owner,
            bytes: 5000,
            created_ms,
            pending: 0,
            content_type: "text/plain".into(),
            name: String::new(),
            sha256: [1; 32],
            width: 0,
            height: 0,
            thumb_bytes: 0,
        };
        meta.add_upload(&up, u64::MAX).unwrap();
    };
    let ids = |ups: Vec<crate::meta::Upload>| ups.into_iter().map(|u| u.id).collect::<Vec<_>>();
    for id in 1..=4 {
        add(id, alice, 100);
    }
    add(9, bob, 10_000);
    // Only the owner's uploads are attached; all or nothing.
    assert!(matches!(
        meta.attach_uploads(alice, &[1, 9]),
        Err(Error::NotFound(_))
    ));
    assert_eq!(meta.upload(1).unwrap().unwrap().pending, 0);
    // Pending between attach and hold: neither removal nor sweep takes it.
    meta.attach_uploads(alice, &[1, 2]).unwrap();
    assert!(matches!(
        meta.remove_unattached(alice, 1),
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(ids(meta.sweep_unattached(1000, 10).unwrap()), [3, 4]);
    assert!(meta.upload(3).unwrap().is_none() && meta.upload(1).unwrap().is_some());
    assert!(meta.hold_uploads(room, 5, &[1, 2]).unwrap().is_empty());
    assert_eq!(meta.upload(1).unwrap().unwrap().pending, 0);
    // Upload 1 in a second message.
    meta.attach_uploads(alice, &[1]).unwrap();
    assert!(meta.hold_uploads(room, 6, &[1]).unwrap().is_empty());
    assert_eq!(meta.upload_holders(1, 10).unwrap(), [(room, 5), (room, 6)]);
    assert!(matches!(
        meta.remove_unattached(alice, 1),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        meta.remove_unattached(bob, 2),
        Err(Error::NotFound(_))
    ));
    // Message 6 deleted: 1 is still in message 5. Twice changes nothing.
    assert!(meta.release_uploads(room, 6).unwrap().is_empty());
    assert!(meta.release_uploads(room, 6).unwrap().is_empty());
    assert_eq!(meta.upload_holders(1, 10).unwrap(), [(room, 5)]);
    // Retention retires message 5: both go, with their charge.
    let before = meta.upload_usage(alice).unwrap();
    let mut freed = ids(meta.advance_low_seqs(&[(room, 6)]).unwrap());
    freed.sort();
    assert_eq!(freed, [1, 2]);
    assert_eq!(meta.upload_usage(alice).unwrap(), before - 2 * 5000);
    // A delete of message 5 arriving after retention finds nothing.
    assert!(meta.release_uploads(room, 5).unwrap().is_empty());
    // A post held after retention retired its seq holds nothing: the
    // upload, held by nothing else, goes.
    add(7, alice, 100);
    meta.attach_uploads(alice, &[7]).unwrap();
    assert_eq!(ids(meta.hold_uploads(room, 3, &[7]).unwrap()), [7]);
    // A refused post gives its count back and removes nothing; then the
    // uploader removes it themself.
    add(8, alice, 100);
    meta.attach_uploads(alice, &[8]).unwrap();
    meta.detach_uploads(&[8]).unwrap();
    assert_eq!(meta.upload(8).unwrap().unwrap().pending, 0);
    assert_eq!(meta.remove_unattached(alice, 8).unwrap().id, 8);
    assert!(matches!(
        meta.remove_unattached(alice, 8),
        Err(Error::NotFound(_))
    ));
    // The sweep leaves young uploads and held ones.
    add(10, alice, 5000);
    meta.attach_uploads(alice, &[10]).unwrap();
    meta.hold_uploads(room, 7, &[10]).unwrap();
    add(11, alice, 5000);
    assert!(meta.sweep_unattached(2000, 10).unwrap().is_empty());
    assert_eq!(ids(meta.sweep_unattached(6000, 10).unwrap()), [11]);
    // Removing an upload (a backup's copy forgetting it) drops its rows.
    meta.remove_upload(10).unwrap();
    assert!(meta.upload_holders(10, 10).unwrap().is_empty());
    assert!(meta.release_uploads(room, 7).unwrap().is_empty());
    assert_eq!(meta.upload_ids().unwrap(), [9]);
}

/// An avatar is an image upload of the user's; while it is theirs it is
/// held (neither removed by its owner nor swept), the one it replaces is
/// held no more; a copy of another node's profile may name an upload this
/// file does not have.
#[test]
fn an_avatar_holds_its_upload_until_replaced() {
    let (_dir, meta) = fresh();
    let (ada, bob) = (user(&meta, "ada"), user(&meta, "bob"));
    let add = |id: u128, owner: u64, thumb_bytes: u64| {
        let up = crate::meta::Upload {
            id,
            owner,
            bytes: 5000,
            created_ms: 100,
            pending: 0,
            content_type: "image/png".into(),
            name: String::new(),
            sha256: [1; 32],
            width: 10,
            height: 10,
            thumb_bytes,
        };
        meta.add_upload(&up, u64::MAX).unwrap();
    };
    add(1, ada, 300);
    add(2, ada, 300);
    add(3, ada, 0);
    add(4, bob, 300);
    let set = |user: u64, avatar: Option<u128>| {
        let edit = crate::meta::ProfileEdit {
            avatar: Some(avatar),
            ..Default::default()
        };
        meta.edit_profile(user, &edit, 5)
    };
    assert!(
        matches!(set(ada, Some(3)), Err(Error::InvalidInput(_))),
        "no image"
    );
    assert!(
        matches!(set(ada, Some(4)), Err(Error::NotFound(_))),
        "bob's"
    );
    assert!(matches!(set(ada, Some(9)), Err(Error::NotFound(_))));
    assert_eq!(set(ada, Some(1)).unwrap().avatar, Some(1));
    assert_eq!(meta.profile(ada).unwrap().unwrap().avatar, Some(1));
    assert!(matches!(
        meta.remove_unattached(ada, 1),
        Err(Error::AlreadyExists(_))
    ));
    // Other edits keep it; the sweep leaves it.
    meta.set_profile(ada, "Ada", "", 6).unwrap();
    assert_eq!(meta.profile(ada).unwrap().unwrap().avatar, Some(1));
    let mut swept: Vec<u128> = meta
        .sweep_unattached(1000, 10)
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    swept.sort();
    assert_eq!(swept, [2, 3, 4]);
    // Replaced: the old one is held no more, and goes with the sweep.
    add(5, ada, 300);
    assert_eq!(set(ada, Some(5)).unwrap().avatar, Some(5));
    assert_eq!(meta.upload_holders(1, 10).unwrap(), []);
    assert_eq!(meta.upload_holders(5, 10).unwrap(), [(0, ada)]);
    assert_eq!(
        meta.sweep_unattached(1000, 10)
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(set(ada, None).unwrap().avatar, None);
    assert!(meta.upload_holders(5, 10).unwrap().is_empty());
    // An avatar whose upload is removed outright (a backup's copy
    // forgetting it) is no avatar.
    assert_eq!(set(ada, Some(5)).unwrap().avatar, Some(5));
    meta.remove_upload(5).unwrap();
    assert_eq!(meta.profile(ada).unwrap().unwrap().avatar, None);
    add(6, ada, 300);
    assert_eq!(set(ada, Some(6)).unwrap().avatar, Some(6));
    meta.set_profile(ada, "Ada", "still here", 8).unwrap();
    // Another node's profile naming an upload this file lacks.
    let profile = Replicated::Profile {
        user: bob,
        display_name: String::new(),
        status: String::new(),
        updated_ms: 7,
        avatar: Some(77),
    };
    meta.replicate_batch(&[profile]).unwrap();
    assert_eq!(meta.profile(bob).unwrap().unwrap().avatar, Some(77));
    // Its other edits keep it, unchecked (the upload is another node's).
    meta.set_profile(bob, "Bob", "", 9).unwrap();
    assert_eq!(meta.profile(bob).unwrap().unwrap().avatar, Some(77));
}

#[test]
fn last_seen_never_moves_back_and_skips_unknown_users() {
    let (_dir, meta) = fresh();
    let ada = user(&meta, "ada");
    assert_eq!(meta.profile(ada).unwrap().unwrap().last_seen_ms, 0);
    meta.note_seen(&[(ada, 50), (999, 60)]).unwrap();
    assert_eq!(meta.profile(ada).unwrap().unwrap().last_seen_ms, 50);
    meta.note_seen(&[(ada, 40)]).unwrap();
    assert_eq!(meta.profile(ada).unwrap().unwrap().last_seen_ms, 50);
    meta.note_seen(&[(ada, 70)]).unwrap();
    assert_eq!(meta.profile(ada).unwrap().unwrap().last_seen_ms, 70);
    assert_eq!(meta.profile(999).unwrap(), None);
}
