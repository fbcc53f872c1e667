//! The web chat page in a real browser: headless Chromium (`common::browser`) loads `/`, sends a
//! message and sees a streamed reply.

mod common;

use common::browser::Browser;
use common::server::{start, tiny_chat_model};

#[test]
fn the_web_page_streams_a_reply_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tiny_chat_model(tmp.path()), &[]);
    let browser = Browser::start(&tmp.path().join("profile"));
    browser.open(&server.base);
    browser.type_into(&browser.find("#input"), "Hello there");
    browser.click(&browser.find("#send"));
    // Wait until the reply bubble has finished streaming.
    let script = "const m = document.querySelectorAll('.msg.assistant, .msg.error'); const last = m[m.length - 1]; \
                  return last ? [last.dataset.state || '', last.querySelector('.text').textContent, document.querySelectorAll('.msg.user').length] : null;";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reply = loop {
        let v = browser.eval(script);
        if v[0] == "done" {
            break v;
        }
        if std::time::Instant::now() > deadline {
            let page = browser.eval("return document.body.innerText");
            panic!("no finished reply: {v}; the page shows: {page}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let model = browser.eval("return document.getElementById('model').textContent");
    drop(browser);
    assert_eq!(reply[2], 1, "the user's message is shown");
    assert!(!reply[1].as_str().unwrap().starts_with("Error"), "{reply}");
    assert!(
        !reply[1].as_str().unwrap().is_empty(),
        "the reply streamed into the page: {reply}"
    );
    assert_eq!(model, "tiny");
}
